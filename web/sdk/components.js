// Percolert's web components: <percolert-notify> (a "Notify me" button for a search or one
// product) and <percolert-alerts> (alerts as toasts and as a list). Shadow DOM, styled
// through CSS custom properties (--percolert-*) and parts (::part(button), ::part(toast)).
// Every piece of data is written with textContent, never parsed as HTML; with `product-url`,
// an alert's products are links (http(s) only) whose clicks count as visits.
//
// Each element takes its client from `element.client`, or else from Percolert.setDefault().

import { Percolert } from "./percolert.js";

// --- texts ---------------------------------------------------------------------------------

export const CHANGE_LABELS = Object.freeze({ new: "new", price_drop: "price drop", back_in_stock: "back in stock" });

const usd = new Intl.NumberFormat(undefined, { style: "currency", currency: "USD" });

/** "your watch “kindle”", or for a product watch without words, "your watch on ER-0001". */
export function watchName(watch) {
  if (watch && watch.terms) return `your watch “${watch.terms}”`;
  if (watch && watch.sku) return `your watch on ${watch.sku}`;
  return "your watch";
}

// What a search alert's searches found, as parts of a line: each product's name as
// `name(product)` gives it (the name itself, or a link to the product), and its price.
function foundParts(alert, money, name = (product) => product.product_name) {
  const found = alert.found ?? [];
  if (found.length === 0) return ["nothing that fits it among the first results"];
  return found.flatMap((product, index) => [
    ...(index === 0 ? [] : [" · "]),
    name(product),
    ` — ${money.format(product.price)}`,
  ]);
}

// "Price drop: " (a product alert's title, before its product's name).
function changeHeading(alert) {
  const label = CHANGE_LABELS[alert.change] ?? "product alert";
  return `${label[0].toUpperCase()}${label.slice(1)}: `;
}

/** A search alert as a title and a line: what matched, and what those searches found. */
export function describeAlert(alert, money = usd) {
  const searches = alert.count === 1 ? "A search" : `${alert.count} searches`;
  return {
    title: `${searches} matched ${watchName(alert.watch)}`,
    text: foundParts(alert, money).join(""),
  };
}

/** A product alert as a title and a line. */
export function describeProductAlert(alert, money = usd) {
  return {
    title: `${changeHeading(alert)}${alert.product.product_name}`,
    text: `${money.format(alert.product.price)} — matches ${watchName(alert.watch)}`,
  };
}

/** The address of a product's page from a template such as "/products/{sku}": `{sku}` and
 * `{name}` (the product's name) filled in URL-encoded, resolved against `base` (the page).
 * Null unless it is an http(s) URL (never `javascript:` and the like). */
export function productUrl(template, product, base = globalThis.document?.baseURI) {
  if (!template || !product || typeof product.sku !== "string") return null;
  const filled = String(template).replace(/\{(sku|name)\}/g, (_, key) =>
    encodeURIComponent(String((key === "sku" ? product.sku : product.product_name) ?? "")),
  );
  let url;
  try {
    url = new URL(filled, base);
  } catch {
    return null;
  }
  return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
}

/** A watch_too_broad notice as a title and a line. */
export function describeTooBroad(notice) {
  const until = new Date(notice.until).toLocaleTimeString();
  return {
    title: `${watchName(notice.watch).replace(/^your/, "Your")} is too broad`,
    text: `it matched ${Math.round(notice.share * 100)}% of recent searches: its search alerts pause until ${until}; add a word to narrow it`,
  };
}

// --- shared plumbing -----------------------------------------------------------------------

const sheets = new Map();

// Constructed style sheets: a strict CSP (style-src 'self', no 'unsafe-inline') refuses a
// <style> element, in a shadow root as anywhere else, but not a sheet built by script.
function adoptStyles(root, css) {
  if ("adoptedStyleSheets" in root && typeof CSSStyleSheet === "function" && "replaceSync" in CSSStyleSheet.prototype) {
    let sheet = sheets.get(css);
    if (sheet === undefined) {
      sheet = new CSSStyleSheet();
      sheet.replaceSync(css);
      sheets.set(css, sheet);
    }
    root.adoptedStyleSheets = [sheet];
    return;
  }
  const style = document.createElement("style");
  style.textContent = css;
  root.append(style);
}

function element(tag, part, text) {
  const made = document.createElement(tag);
  if (part) made.setAttribute("part", part);
  if (text !== undefined) made.textContent = text;
  return made;
}

// The client an element uses: its own, else the default; `onChange` whenever that changes.
class ClientBinding {
  constructor(events, onChange) {
    this.events = events; // {type: handler}
    this.onChange = onChange;
    this.own = null;
    this.bound = null;
    this.connected = false;
    this.onDefault = () => this.refresh();
  }

  get client() {
    return this.own ?? Percolert.getDefault();
  }

  connect() {
    this.connected = true;
    Percolert.defaultChanges.addEventListener("change", this.onDefault);
    this.refresh();
  }

  disconnect() {
    this.connected = false;
    Percolert.defaultChanges.removeEventListener("change", this.onDefault);
    this.bind(null);
  }

  setOwn(client) {
    this.own = client ?? null;
    this.refresh();
  }

  refresh() {
    const client = this.connected ? this.client : null;
    if (client !== this.bound) {
      this.bind(client);
      this.onChange(client);
    }
  }

  bind(client) {
    if (this.bound !== null) {
      for (const [type, handler] of Object.entries(this.events)) this.bound.removeEventListener(type, handler);
    }
    this.bound = client;
    if (client !== null) {
      for (const [type, handler] of Object.entries(this.events)) client.addEventListener(type, handler);
    }
  }
}

// --- <percolert-notify> --------------------------------------------------------------------

const NOTIFY_CSS = `
:host { display: inline-flex; flex-direction: column; align-items: flex-start; gap: 2px; font: inherit; }
:host([hidden]) { display: none; }
button {
  font: inherit; font-size: var(--percolert-button-font-size, 0.9rem); cursor: pointer;
  padding: var(--percolert-button-padding, 6px 14px);
  border: 1px solid var(--percolert-accent, #2d6cdf); border-radius: var(--percolert-radius, 10px);
  background: var(--percolert-button-background, transparent); color: var(--percolert-accent, #2d6cdf);
}
button[aria-pressed="true"] { background: var(--percolert-accent, #2d6cdf); color: var(--percolert-accent-contrast, #fff); }
button:disabled { opacity: 0.6; cursor: progress; }
button:focus-visible { outline: 2px solid var(--percolert-accent, #2d6cdf); outline-offset: 1px; }
[part~="message"] { font-size: 0.8rem; color: var(--percolert-error, #b42318); overflow-wrap: anywhere; }
[part~="message"]:empty { display: none; }
`;

const squeeze = (text) => String(text ?? "").split(/\s+/).filter(Boolean).join(" ").toLowerCase();

function priceAttribute(raw) {
  if (raw === null || raw === "") return null;
  const price = Number(raw);
  return Number.isFinite(price) ? price : null;
}

export class PercolertNotify extends HTMLElement {
  static observedAttributes = [
    "terms", "sku", "sold-out", "max-price", "category", "phrase", "notify", "on",
    "label", "watching-label", "product-name",
  ];

  #binding;
  #button;
  #label;
  #message;
  #watch = null; // the user's watch this button stands for, when there is one
  #busy = false;

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    adoptStyles(root, NOTIFY_CSS);
    this.#button = element("button", "button");
    this.#button.type = "button";
    this.#label = element("span", "label");
    this.#button.append(this.#label);
    this.#message = element("span", "message");
    this.#message.setAttribute("role", "status");
    this.#message.setAttribute("aria-live", "polite");
    root.append(this.#button, this.#message);
    this.#button.addEventListener("click", () => this.#toggle());
    this.#binding = new ClientBinding(
      { watches_changed: (event) => this.#found(event.detail.watches) },
      (client) => this.#found(client?.watchList ?? null),
    );
  }

  /** The Percolert client to use (default: Percolert.getDefault()). */
  get client() {
    return this.#binding.client;
  }

  set client(client) {
    this.#binding.setOwn(client);
  }

  /** The user's watch this button stands for, or null. */
  get watch() {
    return this.#watch;
  }

  connectedCallback() {
    this.#binding.connect();
    this.#render();
  }

  disconnectedCallback() {
    this.#binding.disconnect();
  }

  attributeChangedCallback() {
    this.#found(this.#binding.bound?.watchList ?? null);
  }

  /** The watch spec this button adds: a product watch with `sku`, else a watch of words. */
  get spec() {
    const maxPrice = priceAttribute(this.getAttribute("max-price"));
    const sku = this.getAttribute("sku");
    if (sku) {
      const on = (this.getAttribute("on") ?? "").split(/[\s,]+/).filter(Boolean);
      const spec = { sku, on: on.length > 0 ? on : this.#soldOut ? ["back_in_stock"] : ["price_drop", "back_in_stock"] };
      if (maxPrice !== null) spec.max_price = maxPrice;
      return spec;
    }
    const spec = { terms: this.getAttribute("terms") ?? "" };
    if (this.hasAttribute("phrase")) spec.phrase = true;
    const category = this.getAttribute("category");
    if (category) spec.category = category;
    if (maxPrice !== null) spec.max_price = maxPrice;
    const notify = this.getAttribute("notify");
    if (notify) spec.notify = notify;
    return spec;
  }

  get #soldOut() {
    return this.hasAttribute("sold-out");
  }

  #matches(watch) {
    if (watch.is_default) return false; // everyone's: not this shopper's to toggle
    const sku = this.getAttribute("sku");
    if (sku) return watch.sku === sku;
    if (watch.sku) return false;
    return (
      squeeze(watch.terms) === squeeze(this.getAttribute("terms")) &&
      (watch.category ?? null) === (this.getAttribute("category") || null) &&
      (watch.max_price ?? null) === priceAttribute(this.getAttribute("max-price")) &&
      Boolean(watch.phrase) === this.hasAttribute("phrase")
    );
  }

  #found(watches) {
    if (watches !== null && watches !== undefined) {
      this.#watch = watches.find((watch) => this.#matches(watch)) ?? null;
    }
    this.#render();
  }

  #render() {
    const watching = this.#watch !== null;
    const idle = this.getAttribute("label") || (this.#soldOut ? "Notify me when back in stock" : "Notify me");
    const label = watching ? this.getAttribute("watching-label") || "Watching" : idle;
    this.#label.textContent = label;
    this.#button.setAttribute("aria-pressed", String(watching));
    this.#button.setAttribute("part", watching ? "button watching" : "button");
    this.#button.disabled = this.#busy;
    const subject = this.getAttribute("product-name") || this.getAttribute("terms") || this.getAttribute("sku");
    if (subject) this.#button.setAttribute("aria-label", `${label}: ${subject}`);
    else this.#button.removeAttribute("aria-label");
    const state = this.#busy ? "busy" : this.#message.textContent ? "error" : watching ? "watching" : "idle";
    if (this.getAttribute("state") !== state) this.setAttribute("state", state);
  }

  #fail(error) {
    this.#message.textContent = error.message || String(error);
    this.dispatchEvent(new CustomEvent("percolert-error", { detail: { error }, bubbles: true, composed: true }));
  }

  async #toggle() {
    if (this.#busy) return;
    const client = this.client;
    this.#message.textContent = "";
    if (client === null) {
      this.#fail(new Error("Notifications are not available: no Percolert client"));
      this.#render();
      return;
    }
    this.#busy = true;
    this.#render();
    try {
      if (this.#watch !== null) {
        const gone = this.#watch;
        try {
          await client.removeWatch(gone.id);
        } catch (error) {
          if (error.code !== "watch_not_found") throw error; // gone already: as wanted
        }
        this.#watch = null;
        this.dispatchEvent(new CustomEvent("percolert-unwatch", { detail: { watch: gone }, bubbles: true, composed: true }));
      } else {
        try {
          this.#watch = await client.addWatch(this.spec);
        } catch (error) {
          if (error.code !== "duplicate_watch") throw error;
          // Watched already (from another tab, say): this button stands for that watch.
          this.#watch = (await client.watches()).find((watch) => this.#matches(watch)) ?? null;
          if (this.#watch === null) throw error;
        }
        this.dispatchEvent(new CustomEvent("percolert-watch", { detail: { watch: this.#watch }, bubbles: true, composed: true }));
      }
    } catch (error) {
      this.#fail(error);
    } finally {
      this.#busy = false;
      this.#render();
    }
  }
}

// --- <percolert-alerts> --------------------------------------------------------------------

const ALERTS_CSS = `
:host {
  display: block; font: var(--percolert-font, inherit); color: var(--percolert-foreground, inherit);
}
:host([hidden]) { display: none; }
[part~="list"] { list-style: none; margin: 0; padding: 0; }
[part~="item"] {
  font-size: 0.85rem; padding: 6px 0; border-bottom: 1px solid var(--percolert-line, #e3e8ef);
  overflow-wrap: anywhere;
}
[part~="item-time"] { color: var(--percolert-muted, #5d6b7e); }
[part~="product-link"] {
  color: var(--percolert-link, inherit); text-decoration: underline; text-underline-offset: 2px; cursor: pointer;
}
[part~="product-link"]:focus-visible { outline: 2px solid var(--percolert-accent, #2d6cdf); outline-offset: 1px; }
[part~="empty"] { color: var(--percolert-muted, #5d6b7e); font-size: 0.85rem; margin: 4px 0; }
[part~="toasts"] {
  position: fixed; right: var(--percolert-toasts-right, 16px); bottom: var(--percolert-toasts-bottom, 16px);
  display: flex; flex-direction: column; gap: 8px; z-index: var(--percolert-z-index, 10);
  max-width: min(380px, calc(100vw - 32px));
}
[part~="toast"] {
  display: flex; gap: 10px; align-items: flex-start; overflow-wrap: anywhere;
  background: var(--percolert-toast-background, #1c2430); color: var(--percolert-toast-foreground, #fff);
  border-left: 4px solid var(--percolert-accent, #2d6cdf);
  border-radius: var(--percolert-radius, 12px); padding: 12px 14px;
  box-shadow: 0 8px 24px rgba(0, 0, 0, 0.18); animation: percolert-toast-in 0.18s ease-out;
}
[part~="toast-body"] { flex: 1; }
[part~="toast-text"] { font-size: 0.9rem; opacity: 0.9; }
[part~="toast-close"] {
  font: inherit; font-size: 1.2rem; line-height: 1; padding: 0 4px; border: 0; cursor: pointer;
  background: transparent; color: inherit;
}
@keyframes percolert-toast-in { from { transform: translateY(8px); opacity: 0; } to { transform: none; opacity: 1; } }
@media (prefers-reduced-motion: reduce) { [part~="toast"] { animation: none; } }
`;

const ALL_KINDS = ["alert", "product_alert", "watch_too_broad"];

function positiveNumber(raw, fallback) {
  const value = Number(raw);
  return raw !== null && Number.isFinite(value) && value > 0 ? value : fallback;
}

export class PercolertAlerts extends HTMLElement {
  static observedAttributes = ["mode", "empty-text"];

  #binding;
  #list;
  #empty;
  #toasts;
  #shown = new Set(); // alert ids listed: a greeting's recent alerts are listed once

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    adoptStyles(root, ALERTS_CSS);
    this.#list = element("ul", "list");
    this.#empty = element("p", "empty");
    this.#toasts = element("div", "toasts");
    this.#toasts.setAttribute("aria-live", "polite");
    this.#toasts.setAttribute("aria-atomic", "false");
    root.append(this.#list, this.#empty, this.#toasts);
    this.#binding = new ClientBinding(
      {
        hello: (event) => this.#greeted(event.detail),
        alert: (event) => this.#alert(event.detail),
        product_alert: (event) => this.#productAlert(event.detail),
        away: (event) => this.#away(event.detail),
        watch_too_broad: (event) => this.#tooBroad(event.detail),
      },
      (client) => {
        if (client?.hello) this.#greeted(client.hello);
      },
    );
  }

  get client() {
    return this.#binding.client;
  }

  set client(client) {
    this.#binding.setOwn(client);
  }

  connectedCallback() {
    this.#binding.connect();
    this.#layout();
  }

  disconnectedCallback() {
    this.#binding.disconnect();
  }

  attributeChangedCallback() {
    this.#layout();
  }

  get #mode() {
    const mode = this.getAttribute("mode");
    return mode === "toasts" || mode === "list" ? mode : "both";
  }

  #wants(kind) {
    const kinds = (this.getAttribute("kinds") ?? "").split(/[\s,]+/).filter(Boolean);
    return (kinds.length > 0 ? kinds : ALL_KINDS).includes(kind);
  }

  get #money() {
    try {
      return new Intl.NumberFormat(this.getAttribute("locale") || undefined, {
        style: "currency",
        currency: this.getAttribute("currency") || "USD",
      });
    } catch {
      return usd; // a locale or currency the browser does not know: alerts still show
    }
  }

  #layout() {
    const listed = this.#mode !== "toasts";
    this.#list.hidden = !listed;
    this.#empty.textContent = this.getAttribute("empty-text") ?? "";
    this.#empty.hidden = !listed || this.#list.children.length > 0 || !this.#empty.textContent;
    this.#toasts.hidden = this.#mode === "list";
  }

  /** Show a toast of the page's own (an error, say): `title` and `text` as text. */
  toast(title, text = "", kind = "notice") {
    return this.#toast([String(title ?? "")], [String(text ?? "")], kind);
  }

  // A toast whose title and line are parts: strings (as text) and the panel's own links.
  #toast(title, text, kind) {
    if (this.#mode === "list") return null;
    const toast = element("div", "toast");
    toast.className = "toast";
    toast.dataset.kind = kind;
    toast.setAttribute("role", "status");
    const body = element("div", "toast-body");
    const heading = element("strong", "toast-title");
    heading.className = "toast-title";
    heading.append(...title);
    const line = element("div", "toast-text");
    line.className = "toast-text";
    line.append(...text);
    body.append(heading, line);
    const close = element("button", "toast-close", "×");
    close.type = "button";
    close.className = "toast-close";
    close.setAttribute("aria-label", "Dismiss");
    const dismiss = () => toast.remove();
    close.addEventListener("click", dismiss);
    toast.append(body, close);
    this.#toasts.append(toast);
    const most = positiveNumber(this.getAttribute("max-toasts"), 4);
    while (this.#toasts.children.length > most) this.#toasts.firstElementChild.remove();
    setTimeout(dismiss, positiveNumber(this.getAttribute("toast-seconds"), 8) * 1000);
    return toast;
  }

  /** Empty the list and the toasts. */
  clear() {
    this.#list.replaceChildren();
    this.#toasts.replaceChildren();
    this.#shown.clear();
    this.#layout();
  }

  #item(message, kind, parts) {
    if (this.#mode === "toasts" || this.#shown.has(message.id)) return;
    this.#shown.add(message.id);
    // Bounded for a page open for days: far more ids than the list shows are remembered.
    if (this.#shown.size > 2000) this.#shown.delete(this.#shown.values().next().value);
    const item = element("li", "item");
    item.className = "item";
    item.dataset.kind = kind;
    const time = element("time", "item-time", new Date(message.at).toLocaleTimeString());
    if (message.at) time.dateTime = message.at;
    const text = element("span", "item-text");
    text.append(...parts); // strings become text nodes, never HTML
    item.append(time, document.createTextNode(" — "), text);
    this.#list.prepend(item);
    const most = positiveNumber(this.getAttribute("max-items"), 20);
    while (this.#list.children.length > most) this.#list.lastElementChild.remove();
    this.#layout();
  }

  // With `product-url`, each product an alert shows is a link to its page: followed, the
  // visit is counted (client.visited) and `percolert-visit` dispatched.
  #productName(alert, product) {
    const url = productUrl(this.getAttribute("product-url"), product);
    if (url === null) return product.product_name;
    const link = element("a", "product-link", product.product_name);
    link.className = "product-link";
    link.href = url;
    link.dataset.sku = product.sku;
    link.addEventListener("click", (event) => this.#followed(event, alert, product, url));
    // A middle click opens the product in another tab: followed too.
    link.addEventListener("auxclick", (event) => {
      if (event.button === 1) this.#followed(event, alert, product, url);
    });
    return link;
  }

  #followed(event, alert, product, url) {
    this.client?.visited(alert).catch((error) => {
      this.dispatchEvent(new CustomEvent("percolert-error", { detail: { error }, bubbles: true, composed: true }));
    });
    // Cancelable for a plain click only: the shop's router takes it over (preventDefault);
    // a click meant for another tab or window stays the browser's.
    const plain = event.type === "click" && event.button === 0 &&
      !event.metaKey && !event.ctrlKey && !event.shiftKey && !event.altKey;
    const visit = new CustomEvent("percolert-visit", {
      detail: { alert, product, url },
      bubbles: true,
      composed: true,
      cancelable: plain,
    });
    if (!this.dispatchEvent(visit)) event.preventDefault();
  }

  #alertParts(alert) {
    const { title } = describeAlert(alert, this.#money);
    return { title: [title], text: foundParts(alert, this.#money, (product) => this.#productName(alert, product)) };
  }

  #productAlertParts(alert) {
    const { text } = describeProductAlert(alert, this.#money);
    return { title: [changeHeading(alert), this.#productName(alert, alert.product)], text: [text] };
  }

  #listAlert(alert) {
    const { title, text } = this.#alertParts(alert);
    this.#item(alert, "alert", [...title, ": ", ...text]);
  }

  #listProductAlert(alert) {
    const { title, text } = this.#productAlertParts(alert);
    this.#item(alert, "product_alert", [...title, " — ", ...text]);
  }

  #greeted(hello) {
    // Listed, not toasted: the page is showing what came before it loaded.
    if (!this.#wants("alert")) return;
    for (const alert of hello.recent ?? []) this.#listAlert(alert); // oldest first
  }

  #alert(alert) {
    if (!this.#wants("alert")) return;
    if (!this.#shown.has(alert.id)) {
      const { title, text } = this.#alertParts(alert);
      this.#toast(title, text, "alert");
    }
    this.#listAlert(alert);
  }

  #productAlert(alert) {
    if (!this.#wants("product_alert")) return;
    if (!this.#shown.has(alert.id)) {
      const { title, text } = this.#productAlertParts(alert);
      this.#toast(title, text, "product_alert");
    }
    this.#listProductAlert(alert);
  }

  #away(away) {
    if (!this.#wants("product_alert")) return;
    for (const alert of [...away.alerts].reverse()) this.#listProductAlert(alert); // sent newest first
  }

  #tooBroad(notice) {
    if (!this.#wants("watch_too_broad")) return;
    const { title, text } = describeTooBroad(notice);
    this.toast(title, text, "watch_too_broad");
  }
}

if (!customElements.get("percolert-notify")) customElements.define("percolert-notify", PercolertNotify);
if (!customElements.get("percolert-alerts")) customElements.define("percolert-alerts", PercolertAlerts);
