// Types of percolert.js: the client of a Percolert server, and every message it speaks.

/** The shape of the socket's messages this SDK reads (hello's `protocol`). */
export declare const PROTOCOL: 2;

/** Close codes of the alert socket. */
export declare const CloseCode: {
  readonly NORMAL: 1000;
  readonly GOING_AWAY: 1001;
  readonly UNSUPPORTED_DATA: 1003;
  readonly POLICY_VIOLATION: 1008;
  readonly SERVICE_RESTART: 1012;
  readonly SLOW_CLIENT: 1013;
  readonly UNAUTHORIZED: 4401;
  readonly OTHER_ACCOUNT: 4403;
  readonly AUTH_TIMEOUT: 4408;
  readonly ACCOUNT_ERASED: 4410;
};

// --- watches -------------------------------------------------------------------------------

/** What a watch of words alerts on: other shoppers' searches, catalog changes, or both. */
export type Notify = "searches" | "products" | "both";

/** What a product watch alerts on. */
export type ProductEvent = "back_in_stock" | "price_drop";

/** A watch of words: alerted when someone else's search, or a catalog change, matches. */
export interface TermsWatchSpec {
  terms: string;
  phrase?: boolean;
  category?: string | null;
  max_price?: number | null;
  notify?: Notify;
  sku?: never;
}

/** A watch of one product, by its SKU: alerted when it is back in stock or cheaper (`on`,
 * both by default; at or under `max_price`, if given). Never alerted of searches. */
export interface ProductWatchSpec {
  sku: string;
  on?: ProductEvent[];
  max_price?: number | null;
  terms?: never;
}

export type WatchSpec = TermsWatchSpec | ProductWatchSpec;

/** A stored watch. A product watch has its `sku` and `on` (its `terms`: the product's name
 * when it was made); a watch of words has them null. */
export interface Watch {
  id: string;
  terms: string;
  phrase: boolean;
  category: string | null;
  max_price: number | null;
  /** The shop's own, everyone's: not the shopper's to change. */
  is_default: boolean;
  created_at: string;
  notify: Notify;
  sku: string | null;
  on: ProductEvent[] | null;
}

/** Of the anonymous session's watches: moved into the account, dropped as duplicates of the
 * account's, or left with the session (the account at its cap, or refused now). */
export interface MergeResult {
  moved: number;
  duplicates: number;
  over_cap: number;
  refused: number;
}

// --- search --------------------------------------------------------------------------------

export interface SearchHit {
  /** The product's SKU. */
  id: string;
  product_name: string;
  description: string;
  price: number;
  category: string;
  brand: string;
  in_stock: boolean;
  score: number;
}

export interface SearchResponse {
  query: string;
  total: number;
  took_ms: number;
  results: SearchHit[];
  at: string;
}

// --- messages from the socket --------------------------------------------------------------

/** The user's watch an alert is about. */
export interface AlertWatch {
  id: string;
  terms: string;
  category?: string | null;
  max_price?: number | null;
  sku?: string | null;
}

/** A product as an alert shows it (`previous_price`: when its price fell). */
export interface ProductCard {
  sku: string;
  product_name: string;
  price: number;
  previous_price: number | null;
  category: string;
  brand: string;
}

/** Other shoppers' searches matched a watch of the user's: what matched, never what they
 * typed nor who they are. */
export interface AlertMessage {
  type: "alert";
  id: string;
  /** Position in the user's stream of search alerts (what `after=` resumes from). */
  seq: number;
  watch: AlertWatch;
  /** How many searches this alert stands for. */
  count: number;
  at: string;
  /** Up to 3 products those searches found that fit the watch. */
  found: ProductCard[];
}

export type ProductChange = "new" | "price_drop" | "back_in_stock";

/** A catalog change matched a watch of the user's (a digest when `total` > 1). */
export interface ProductAlertMessage {
  type: "product_alert";
  id: string;
  seq: number;
  watch: AlertWatch;
  change: ProductChange;
  product: ProductCard;
  at: string;
  total: number;
  more: ProductCard[];
}

/** Product alerts that came while the user was away, newest first, and how many more. */
export interface Away {
  alerts: ProductAlertMessage[];
  more: number;
}

export interface HelloMessage {
  type: "hello";
  protocol: number;
  coalesce_seconds: number;
  /** null while the server cannot read them. */
  watches: Watch[] | null;
  /** This session's latest search alerts, oldest first (for a list after a reload). */
  recent: AlertMessage[];
  last_seq: number;
  away: Away | null;
  /** After a resume (`after=`): whether every alert missed since follows (false: more than
   * the newest 200 were missed, or the server could not read its log); null otherwise. */
  recovered?: boolean | null;
}

export interface WatchesChangedMessage {
  type: "watches_changed";
  watches: Watch[];
}

export interface WatchTooBroadMessage {
  type: "watch_too_broad";
  watch: AlertWatch;
  /** The share of recent searches it matched (0 to 1). */
  share: number;
  /** Its search alerts pause until then. */
  until: string;
}

export interface TokenExpiringMessage {
  type: "token_expiring";
  expires_at: string;
}

export type ServerMessage =
  | HelloMessage
  | AlertMessage
  | ProductAlertMessage
  | WatchesChangedMessage
  | WatchTooBroadMessage
  | TokenExpiringMessage
  | { type: "pong" };

/** Everything the server keeps about the user (GET /api/me/export). */
export interface DataExport {
  exported_at: string;
  identity: { kind: "anonymous" | "account"; user_id: string; session_started: string | null };
  watches: Watch[];
  alerts: AlertMessage[];
  product_alerts: ProductAlertMessage[];
  /** Which product alerts were shown already. */
  seen_mark: { upto: number; shown: Record<string, number> } | null;
  /** Each list holds at most this many, newest first; `truncated` says whether one was cut. */
  limit: number;
  truncated: boolean;
}

// --- the client ----------------------------------------------------------------------------

/** Where the client is: "live" once greeted (not merely when the socket opens). */
export type Status = "idle" | "connecting" | "live" | "offline" | "unauthorized" | "closed";

export interface StatusDetail {
  status: Status;
  /** "offline": how long until the next attempt, in ms. */
  retryIn?: number;
  /** "offline": the socket's close code and reason. */
  code?: number;
  reason?: string;
  /** "unauthorized": why (`code` "unauthorized", or "account_erased" after 4410). */
  error?: PercolertError;
}

export interface ProtocolMismatchDetail {
  expected: number;
  received: number;
  hello: HelloMessage;
}

/** Why the client asks for a token: before a socket ("connect", "reconnect"), after the
 * server refused one ("expired", "unauthorized"), before one expires ("expiring"), or for an
 * API call when it holds none ("request"). */
export type TokenReason = "connect" | "reconnect" | "expired" | "expiring" | "unauthorized" | "request";

export interface PercolertOptions {
  /** The Percolert server (default: this page's origin). */
  baseUrl?: string | URL;
  /** The shop's token (a JWT) for its logged-in customer; null when there is none. Without
   * this option the client is anonymous (a cookie the server sets). */
  getToken?: (context: { reason: TokenReason }) => Promise<string | null> | string | null;
  /** Backoff between reconnects, in ms (default 1000, doubling up to 30000). */
  reconnect?: { initialDelay?: number; maxDelay?: number };
  /** Keep-alive ping, in ms (default 25000). */
  pingInterval?: number;
}

export interface PercolertEventMap {
  status: CustomEvent<StatusDetail>;
  hello: CustomEvent<HelloMessage>;
  alert: CustomEvent<AlertMessage>;
  product_alert: CustomEvent<ProductAlertMessage>;
  away: CustomEvent<Away>;
  watches_changed: CustomEvent<WatchesChangedMessage>;
  watch_too_broad: CustomEvent<WatchTooBroadMessage>;
  token_expiring: CustomEvent<TokenExpiringMessage>;
  protocol_mismatch: CustomEvent<ProtocolMismatchDetail>;
  error: CustomEvent<PercolertError>;
}

/** A failed call: the server's error `code` and `message`, and the HTTP `status` (0 when
 * the server could not be reached: `code` "network"). */
export declare class PercolertError extends Error {
  constructor(message: string, options?: { code?: string; status?: number; cause?: unknown });
  readonly code: string;
  readonly status: number;
}

export declare class Percolert extends EventTarget {
  constructor(options?: PercolertOptions);

  /** The client components use when given none. */
  static setDefault(client: Percolert | null): void;
  static getDefault(): Percolert | null;
  /** Fires `change` whenever `setDefault` is called. */
  static readonly defaultChanges: EventTarget;

  readonly status: Status;
  /** Whether the client speaks for a shop's customer (a token). */
  readonly authenticated: boolean;
  /** The newest search alert's position: the socket resumes after it. */
  readonly lastSeq: number | null;
  /** The user's watches as last known, or null before any. */
  readonly watchList: Watch[] | null;
  /** The latest greeting, or null before the first. */
  readonly hello: HelloMessage | null;

  /** Open the socket and keep it open (reconnecting) until `close()`. */
  connect(): void;
  /** Close the socket and stop reconnecting. */
  close(): void;

  /** Make sure the anonymous session exists (API calls do this themselves). */
  session(): Promise<void>;
  search(query: string, options?: { size?: number }): Promise<SearchResponse>;
  categories(): Promise<string[]>;
  watches(): Promise<Watch[]>;
  addWatch(spec: WatchSpec): Promise<Watch>;
  removeWatch(id: string): Promise<void>;
  setNotify(id: string, notify: Notify): Promise<Watch>;
  /** At login: move this browser's anonymous watches into the customer's account. */
  mergeAnonymousWatches(): Promise<MergeResult>;
  /** Everything the server keeps about this user. */
  exportMyData(): Promise<DataExport>;
  /** An alert was followed to the shop (a click on one of its products): counted per watch
   * for the shop admin's demand view (alert → visit rate). Takes the alert (counted once per
   * alert) or its watch's id; sent with `keepalive`, so it outlives the navigation that
   * follows. Rejects with a PercolertError (`watch_not_found`: not a watch the user hears
   * from), never unhandled: a click handler may leave it unawaited. */
  visited(alertOrWatchId: AlertMessage | ProductAlertMessage | string): Promise<void>;

  addEventListener<K extends keyof PercolertEventMap>(
    type: K,
    listener: (this: Percolert, event: PercolertEventMap[K]) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof PercolertEventMap>(
    type: K,
    listener: (this: Percolert, event: PercolertEventMap[K]) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}
