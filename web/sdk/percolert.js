// Percolert SDK: the alert socket and the HTTP API of a Percolert server, for a shop's pages.
// An ES module with no dependencies and no build step; its types are in percolert.d.ts.
//
// One `Percolert` object per page: it keeps one socket open (reconnecting with backoff and
// resuming with `?after=`, so that no alert is missed and none is delivered twice), and
// dispatches the socket's messages as events named like them (`alert`, `product_alert`,
// `watches_changed`, ...), each a CustomEvent whose `detail` is the message.

/** The shape of the socket's messages this SDK reads (hello's `protocol`). */
export const PROTOCOL = 2;

/** Close codes of the alert socket (docs/api/websocket.md). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001, // the server is shutting down: reconnect
  UNSUPPORTED_DATA: 1003,
  POLICY_VIOLATION: 1008, // no session, foreign origin, malformed message
  SERVICE_RESTART: 1012, // resync: reconnect with after=
  SLOW_CLIENT: 1013, // fell too far behind: reconnect with after=
  UNAUTHORIZED: 4401, // the token is invalid or expired: a fresh one, then reconnect
  OTHER_ACCOUNT: 4403, // a fresh token named another account: reconnect as that one
  AUTH_TIMEOUT: 4408, // no auth message in time: reconnect
  ACCOUNT_ERASED: 4410, // the shop erased the account: never reconnect with its token
});

const OPEN = 1; // WebSocket.OPEN, without needing the global at import time
// Alerts (and product alerts) remembered as delivered: well above the server's replay of
// at most 200 missed alerts, so nothing replayed is delivered a second time.
const REMEMBERED_IDS = 2000;
// Where an alert followed to the shop is counted (the shop admin's demand view).
const VISITS_PATH = "/api/alerts/visits";

/** What a failed call says: the server's error `code` and `message`, and the HTTP status
 * (0 when the server could not be reached). */
export class PercolertError extends Error {
  constructor(message, { code = "error", status = 0, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "PercolertError";
    this.code = code;
    this.status = status;
  }
}

// A set that forgets its oldest entries past `limit` (a Set iterates in insertion order).
class RecentIds {
  constructor(limit) {
    this.limit = limit;
    this.ids = new Set();
  }

  has(id) {
    return this.ids.has(id);
  }

  add(id) {
    this.ids.add(id);
    if (this.ids.size > this.limit) this.ids.delete(this.ids.values().next().value);
  }

  delete(id) {
    this.ids.delete(id);
  }
}

function errorFromReply(status, body) {
  const error = body && typeof body === "object" ? body.error : null;
  if (error && typeof error.message === "string") {
    return new PercolertError(error.message, { code: String(error.code || "error"), status });
  }
  return new PercolertError(`request failed (${status})`, { code: "http_error", status });
}

let defaultClient = null;
const defaultChanges = new EventTarget();

export class Percolert extends EventTarget {
  #api; // base URL of the API, without a trailing slash
  #socketUrl; // the socket's URL, without a query
  #credentials;
  #getToken;
  #token = null;
  #tokenRequest = null;
  #session = null;
  #initialDelay;
  #maxDelay;
  #pingInterval;

  #wanted = false; // connect() called and close() not since
  #status = "idle";
  #socket = null;
  #opening = 0; // numbers each attempt: a stale attempt's callbacks do nothing
  #opened = false; // a socket was attempted before: the session is asked for again
  #retryDelay;
  #retryTimer = null;
  #pinger = null;
  #rejections = 0; // 4401 closes since the last greeting
  #erased = null; // the account was erased (4410): no more changes with its token
  #onOnline = () => this.#retryNow();

  #lastSeq = null;
  #alerts = new RecentIds(REMEMBERED_IDS);
  #productAlerts = new RecentIds(REMEMBERED_IDS);
  #visits = new RecentIds(REMEMBERED_IDS); // alerts whose visit was sent (or is being sent)
  #watches = null;
  #hello = null;

  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] the Percolert server (default: this page's origin)
   * @param {(context: {reason: string}) => Promise<string|null>} [options.getToken] the
   *   shop's token for its logged-in customer; without it the client is anonymous (a cookie)
   * @param {{initialDelay?: number, maxDelay?: number}} [options.reconnect] backoff, in ms
   * @param {number} [options.pingInterval] keep-alive, in ms
   */
  constructor(options = {}) {
    super();
    const here = globalThis.location ? globalThis.location.href : undefined;
    if (options.baseUrl === undefined && here === undefined) {
      throw new PercolertError("give baseUrl: there is no page whose origin to use", { code: "invalid_base_url" });
    }
    let base;
    try {
      base = new URL(options.baseUrl ?? here, here);
    } catch (error) {
      throw new PercolertError(`baseUrl is not a URL: ${options.baseUrl}`, { code: "invalid_base_url", cause: error });
    }
    if (base.protocol !== "http:" && base.protocol !== "https:") {
      throw new PercolertError(`baseUrl must be an http(s) URL, got ${base.href}`, { code: "invalid_base_url" });
    }
    const path = options.baseUrl === undefined ? "" : base.pathname.replace(/\/+$/, "");
    this.#api = `${base.origin}${path}`;
    this.#socketUrl = `${base.protocol === "https:" ? "wss:" : "ws:"}//${base.host}${path}/ws`;
    const sameOrigin = globalThis.location !== undefined && base.origin === globalThis.location.origin;
    this.#credentials = sameOrigin ? "same-origin" : "include";
    if (options.getToken !== undefined && typeof options.getToken !== "function") {
      throw new PercolertError("getToken must be a function returning a token", { code: "invalid_option" });
    }
    this.#getToken = options.getToken ?? null;
    this.#initialDelay = options.reconnect?.initialDelay ?? 1000;
    this.#maxDelay = options.reconnect?.maxDelay ?? 30000;
    this.#pingInterval = options.pingInterval ?? 25000;
    this.#retryDelay = this.#initialDelay;
  }

  // --- the default client, for the components ------------------------------------------

  /** The client components use when they are given none (`element.client`). */
  static setDefault(client) {
    defaultClient = client;
    defaultChanges.dispatchEvent(new Event("change"));
  }

  static getDefault() {
    return defaultClient;
  }

  /** Fires `change` whenever `setDefault` is called. */
  static get defaultChanges() {
    return defaultChanges;
  }

  // --- state ---------------------------------------------------------------------------

  /** "idle" | "connecting" | "live" | "offline" | "unauthorized" | "closed" */
  get status() {
    return this.#status;
  }

  /** Whether the client speaks for a shop's customer (a token) rather than a cookie. */
  get authenticated() {
    return this.#getToken !== null;
  }

  /** The position of the newest search alert delivered: the socket resumes after it. */
  get lastSeq() {
    return this.#lastSeq;
  }

  /** The user's watches as last known (greeting, changes, this client's calls), or null. */
  get watchList() {
    return this.#watches;
  }

  /** The latest greeting, or null before the first. */
  get hello() {
    return this.#hello;
  }

  // --- the socket ----------------------------------------------------------------------

  /** Open the socket and keep it open (reconnecting) until `close()`. */
  connect() {
    if (this.#wanted) return;
    this.#wanted = true;
    this.#rejections = 0;
    this.#erased = null; // asked to connect again: the shop has a customer again
    this.#retryDelay = this.#initialDelay;
    globalThis.addEventListener?.("online", this.#onOnline);
    this.#open("connect");
  }

  /** Close the socket and stop reconnecting. */
  close() {
    this.#wanted = false;
    this.#opening += 1;
    globalThis.removeEventListener?.("online", this.#onOnline);
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#stopPinging();
    const socket = this.#socket;
    this.#socket = null;
    if (socket !== null) socket.close(CloseCode.NORMAL);
    this.#setStatus("closed");
  }

  #setStatus(status, extra = {}) {
    this.#status = status;
    this.#emit("status", { status, ...extra });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #error(error) {
    this.#emit("error", error);
  }

  async #open(reason) {
    const attempt = ++this.#opening;
    this.#setStatus("connecting");
    let token = null;
    if (this.#getToken !== null) {
      try {
        token = await this.#freshToken(reason);
      } catch (error) {
        if (attempt === this.#opening) this.#unauthorized(error);
        return;
      }
    } else {
      // On a reconnect the session is asked for again: the cookie may have expired or the
      // server's secret changed. A refusal leaves the socket to fail and back off.
      await this.#ensureSession(this.#opened).catch(() => {});
    }
    if (attempt !== this.#opening || !this.#wanted) return;
    this.#opened = true;
    const url = new URL(this.#socketUrl);
    if (token !== null) url.searchParams.set("auth", "token");
    if (this.#lastSeq !== null) url.searchParams.set("after", String(this.#lastSeq));
    let socket;
    try {
      socket = new WebSocket(url.href);
    } catch (error) {
      this.#error(new PercolertError(`cannot open the socket: ${error.message}`, { code: "socket", cause: error }));
      this.#retryLater(0, "");
      return;
    }
    this.#socket = socket;
    socket.addEventListener("open", () => {
      if (socket !== this.#socket) return;
      // The token goes in the first message, never in the URL (URLs end up in logs).
      if (token !== null) socket.send(JSON.stringify({ type: "auth", token }));
      this.#pinger = setInterval(() => {
        if (socket.readyState === OPEN) socket.send(JSON.stringify({ type: "ping" }));
      }, this.#pingInterval);
    });
    socket.addEventListener("message", (event) => {
      if (socket !== this.#socket) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message !== null && typeof message === "object") this.#receive(message, socket);
    });
    socket.addEventListener("close", (event) => {
      if (socket !== this.#socket) return;
      this.#socket = null;
      this.#stopPinging();
      this.#closed(event.code, event.reason);
    });
  }

  #stopPinging() {
    clearInterval(this.#pinger);
    this.#pinger = null;
  }

  #closed(code, reason) {
    if (!this.#wanted) return;
    if (code === CloseCode.ACCOUNT_ERASED) {
      this.#erased = new PercolertError(reason || "the account was erased", { code: "account_erased", status: 410 });
      this.#unauthorized(this.#erased);
      return;
    }
    if (code === CloseCode.OTHER_ACCOUNT) {
      // The customer changed (logged out and in as someone else): another user's stream,
      // whose positions and alerts have nothing to do with this one's.
      this.#forgetStream();
      this.#open("reconnect");
      return;
    }
    if (code === CloseCode.UNAUTHORIZED && this.#getToken !== null) {
      // The token is invalid or expired: a fresh one, at once the first time. A server that
      // refuses fresh tokens again and again is told "unauthorized" rather than looped on.
      this.#token = null;
      this.#rejections += 1;
      if (this.#rejections >= 3) {
        this.#unauthorized(new PercolertError(reason || "the server refused the token", { code: "unauthorized", status: 401 }));
        return;
      }
      if (this.#rejections === 1) {
        this.#open("expired");
        return;
      }
    }
    this.#retryLater(code, reason);
  }

  #retryLater(code, reason) {
    // Exponential backoff with jitter, so that a restarted server is not stampeded.
    const delay = Math.round(Math.min(this.#retryDelay, this.#maxDelay) * (0.75 + Math.random() * 0.5));
    this.#retryDelay = Math.min(this.#retryDelay * 2, this.#maxDelay);
    this.#setStatus("offline", { retryIn: delay, code, reason });
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      if (this.#wanted) this.#open(code === CloseCode.UNAUTHORIZED ? "expired" : "reconnect");
    }, delay);
  }

  #retryNow() {
    // The browser is back online: no need to wait out the backoff.
    if (this.#wanted && this.#retryTimer !== null) {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = null;
      this.#open("reconnect");
    }
  }

  #unauthorized(error) {
    this.#wanted = false;
    this.#opening += 1;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    globalThis.removeEventListener?.("online", this.#onOnline);
    const failure = error instanceof PercolertError
      ? error
      : new PercolertError(`no token: ${error?.message ?? error}`, { code: "unauthorized", status: 401, cause: error });
    this.#setStatus("unauthorized", { error: failure });
    this.#error(failure);
  }

  #forgetStream() {
    this.#lastSeq = null;
    this.#alerts = new RecentIds(REMEMBERED_IDS);
    this.#productAlerts = new RecentIds(REMEMBERED_IDS);
    this.#visits = new RecentIds(REMEMBERED_IDS);
    this.#watches = null;
    this.#hello = null;
  }

  #receive(message, socket) {
    switch (message.type) {
      case "hello":
        this.#greeted(message, socket);
        break;
      case "alert":
        if (this.#alerts.has(message.id)) return; // replayed, and delivered before
        this.#alerts.add(message.id);
        if (typeof message.seq === "number" && (this.#lastSeq === null || message.seq > this.#lastSeq)) {
          this.#lastSeq = message.seq;
        }
        this.#emit("alert", message);
        break;
      case "product_alert":
        // Their own space of positions: not for `after`; known by id.
        if (this.#productAlerts.has(message.id)) return;
        this.#productAlerts.add(message.id);
        this.#emit("product_alert", message);
        break;
      case "watches_changed":
        this.#watches = message.watches;
        this.#emit("watches_changed", message);
        break;
      case "token_expiring":
        this.#emit("token_expiring", message);
        this.#renew(socket);
        break;
      case "pong":
        break;
      default:
        // watch_too_broad, and whatever a newer server adds: as named.
        if (typeof message.type === "string" && message.type) this.#emit(message.type, message);
    }
  }

  #greeted(hello, socket) {
    this.#retryDelay = this.#initialDelay;
    this.#rejections = 0;
    if (hello.protocol !== PROTOCOL) {
      // The page decides: reload for a newer SDK, or show what it can.
      this.#emit("protocol_mismatch", { expected: PROTOCOL, received: hello.protocol, hello });
      if (socket !== this.#socket) return; // closed by a listener
    }
    this.#hello = hello;
    // Live only once greeted: a socket closed right after its handshake (too many open
    // tabs, a refused token) is not live, and alerts stored before the greeting are in it.
    this.#setStatus("live");
    const fresh = this.#lastSeq === null;
    for (const alert of hello.recent ?? []) this.#alerts.add(alert.id);
    // A fresh client resumes after what the greeting lists. A resuming one keeps its own
    // position until the replayed alerts (which follow the greeting) have come in.
    if (fresh && typeof hello.last_seq === "number") this.#lastSeq = hello.last_seq;
    this.#emit("hello", hello);
    if (socket !== this.#socket) return;
    if (hello.watches !== null && hello.watches !== undefined) {
      this.#watches = hello.watches;
      this.#emit("watches_changed", { type: "watches_changed", watches: hello.watches });
    }
    if (hello.away) {
      const alerts = (hello.away.alerts ?? []).filter((alert) => !this.#productAlerts.has(alert.id));
      for (const alert of alerts) this.#productAlerts.add(alert.id);
      this.#emit("away", { alerts, more: hello.away.more ?? 0 });
    }
  }

  async #renew(socket) {
    // Same socket, same account: a fresh token in an `auth` message, no reconnect. Should
    // none come, the server closes with 4401 when the old one expires.
    try {
      const token = await this.#freshToken("expiring");
      if (socket === this.#socket && socket.readyState === OPEN) {
        socket.send(JSON.stringify({ type: "auth", token }));
      }
    } catch (error) {
      this.#error(error instanceof PercolertError ? error : new PercolertError(String(error), { code: "unauthorized", status: 401 }));
    }
  }

  // --- tokens and sessions -------------------------------------------------------------

  // Calls made together share one request for a token.
  #freshToken(reason) {
    if (this.#tokenRequest === null) {
      this.#tokenRequest = (async () => {
        let token;
        try {
          token = await this.#getToken({ reason });
        } catch (error) {
          throw new PercolertError(`could not get a token: ${error?.message ?? error}`, {
            code: "unauthorized",
            status: 401,
            cause: error,
          });
        }
        if (typeof token !== "string" || token === "") {
          throw new PercolertError("no token: the customer is not logged in", { code: "unauthorized", status: 401 });
        }
        this.#token = token;
        return token;
      })().finally(() => {
        this.#tokenRequest = null;
      });
    }
    return this.#tokenRequest;
  }

  // The page loads without a session; one is asked for before the first API call and
  // before each socket (a handshake cannot be relied on to set a cookie). Calls made
  // together share one request, so that they do not start a session each.
  #ensureSession(again = false) {
    if (this.#session === null || again) {
      const session = this.#fetch("POST", "/api/session", {}).then(async (reply) => {
        if (!reply.ok) throw errorFromReply(reply.status, await reply.json().catch(() => null));
      });
      this.#session = session;
      session.catch(() => {
        if (this.#session === session) this.#session = null; // asked again by the next call
      });
    }
    return this.#session;
  }

  /** Make sure the anonymous session exists (the API calls do this themselves). */
  session() {
    return this.#ensureSession();
  }

  async #fetch(method, path, body, headers = {}, { keepalive = false } = {}) {
    const init = { method, credentials: this.#credentials, headers: { ...headers } };
    // keepalive: the request goes on when the page is left (a click that navigates).
    if (keepalive) init.keepalive = true;
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    try {
      return await fetch(`${this.#api}${path}`, init);
    } catch (error) {
      throw new PercolertError("cannot reach the Percolert server", { code: "network", status: 0, cause: error });
    }
  }

  async #request(method, path, body, options = {}) {
    // An erased account's token may still be valid for a while: nothing is written with it
    // (a "Notify me" pressed after the erasure would make the account anew).
    if (this.#erased !== null && method !== "GET") throw this.#erased;
    for (let attempt = 0; ; attempt += 1) {
      const headers = {};
      if (this.#getToken !== null) {
        const token = this.#token ?? (await this.#freshToken("request"));
        headers.Authorization = `Bearer ${token}`;
      } else {
        await this.#ensureSession();
      }
      const reply = await this.#fetch(method, path, body, headers, options);
      if (reply.status === 401 && attempt === 0) {
        // Expired token, or a cookie the browser dropped: renewed once, then asked again.
        if (this.#getToken !== null) {
          this.#token = null;
          await this.#freshToken("unauthorized");
        } else {
          await this.#ensureSession(true);
        }
        continue;
      }
      if (reply.status === 204) return null;
      const data = await reply.json().catch(() => null);
      if (!reply.ok) throw errorFromReply(reply.status, data);
      return data;
    }
  }

  // --- the API -------------------------------------------------------------------------

  /** Search the catalog (`size`: how many results, 1 to the server's maximum). */
  search(query, { size = 10 } = {}) {
    const params = new URLSearchParams({ q: query, size: String(size) });
    return this.#request("GET", `/api/search?${params}`);
  }

  /** The catalog's categories, for a watch's category. */
  async categories() {
    return (await this.#request("GET", "/api/categories")).categories;
  }

  /** The user's watches (the shop's defaults among them, `is_default`). */
  async watches() {
    const { watches } = await this.#request("GET", "/api/watches");
    this.#changedWatches(watches);
    return watches;
  }

  /** Watch words (`{terms, phrase?, category?, max_price?, notify?}`) or a product
   * (`{sku, on, max_price?}`); resolves with the stored watch. */
  async addWatch(spec) {
    const watch = await this.#request("POST", "/api/watches", spec);
    if (this.#watches !== null) {
      this.#changedWatches([...this.#watches.filter((known) => known.id !== watch.id), watch]);
    }
    return watch;
  }

  async removeWatch(id) {
    await this.#request("DELETE", `/api/watches/${encodeURIComponent(id)}`);
    if (this.#watches !== null) this.#changedWatches(this.#watches.filter((watch) => watch.id !== id));
  }

  /** What a watch alerts on: "searches", "products" or "both". */
  async setNotify(id, notify) {
    const watch = await this.#request("PATCH", `/api/watches/${encodeURIComponent(id)}`, { notify });
    if (this.#watches !== null) {
      this.#changedWatches(this.#watches.map((known) => (known.id === watch.id ? watch : known)));
    }
    return watch;
  }

  /** At login: move this browser's anonymous watches into the customer's account (sent
   * with the token and the anonymous cookie). Idempotent. */
  mergeAnonymousWatches() {
    if (this.#getToken === null) {
      return Promise.reject(new PercolertError("merging needs a token: construct the client with getToken", { code: "no_token" }));
    }
    // The anonymous cookie goes along with every call (`credentials`); nothing to add.
    return this.#request("POST", "/api/me/merge", {});
  }

  /** Everything the server keeps about this user, as JSON. */
  exportMyData() {
    return this.#request("GET", "/api/me/export");
  }

  /** An alert was followed to the shop (the shopper clicked one of its products): counted
   * per watch, never per shopper, for the shop admin's demand view (alert → visit rate).
   * Takes the alert (an `alert` or `product_alert` message: counted once, however many of
   * its products are clicked) or its watch's id. Sent with `keepalive`, so it outlives the
   * navigation the click starts. Rejects like the other calls (a PercolertError; code
   * `watch_not_found` for a watch the user does not hear from), but never unhandled: a
   * click handler may call it without waiting for it. */
  visited(alertOrWatchId) {
    const alert = alertOrWatchId !== null && typeof alertOrWatchId === "object" ? alertOrWatchId : null;
    const watchId = alert !== null ? alert.watch?.id : alertOrWatchId;
    // Search alerts and product alerts number their ids apart.
    const key = alert !== null && alert.id !== undefined ? `${alert.type}:${alert.id}` : null;
    let visit;
    if (typeof watchId !== "string" || watchId === "") {
      visit = Promise.reject(new PercolertError("visited() takes an alert or its watch's id", { code: "invalid_visit" }));
    } else if (key !== null && this.#visits.has(key)) {
      visit = Promise.resolve(); // this alert's visit is counted already
    } else {
      if (key !== null) this.#visits.add(key);
      const body = key !== null ? { watch_id: watchId, alert_id: key } : { watch_id: watchId };
      visit = this.#request("POST", VISITS_PATH, body, { keepalive: true }).then(
        () => undefined,
        (error) => {
          if (key !== null) this.#visits.delete(key); // not counted: another click may try again
          throw error;
        },
      );
    }
    visit.catch(() => {}); // handled: whoever waits for it still sees the rejection
    return visit;
  }

  #changedWatches(watches) {
    this.#watches = watches;
    this.#emit("watches_changed", { type: "watches_changed", watches });
  }
}
