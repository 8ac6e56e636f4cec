// Types of components.js: <percolert-notify>, <percolert-alerts> and the texts they show.

import type {
  AlertMessage,
  AlertWatch,
  Percolert,
  PercolertError,
  ProductAlertMessage,
  ProductCard,
  ProductChange,
  Watch,
  WatchSpec,
  WatchTooBroadMessage,
} from "./percolert.js";

export declare const CHANGE_LABELS: Readonly<Record<ProductChange, string>>;

export interface Described {
  title: string;
  text: string;
}

/** "your watch “kindle”" (or "your watch on SKU" for a product watch without words). */
export declare function watchName(watch: AlertWatch | Watch | null | undefined): string;
export declare function describeAlert(alert: AlertMessage, money?: Intl.NumberFormat): Described;
export declare function describeProductAlert(alert: ProductAlertMessage, money?: Intl.NumberFormat): Described;
export declare function describeTooBroad(notice: WatchTooBroadMessage): Described;
/** A product page's address from a template ("/products/{sku}"; `{sku}` and `{name}` filled
 * in URL-encoded), resolved against `base` (default: the page): null unless http(s). */
export declare function productUrl(
  template: string | null | undefined,
  product: Pick<ProductCard, "sku" | "product_name">,
  base?: string | URL,
): string | null;

export interface NotifyEventDetail {
  watch: Watch;
}

export interface NotifyErrorDetail {
  error: PercolertError | Error;
}

/** A product of an alert was followed (`<percolert-alerts product-url>`): the alert, the
 * product and the link's address. Cancelable for a plain click: `preventDefault()` keeps the
 * browser from navigating, for the shop's own routing. */
export interface VisitEventDetail {
  alert: AlertMessage | ProductAlertMessage;
  product: ProductCard;
  url: string;
}

/**
 * `<percolert-notify terms="kindle">` or `<percolert-notify sku="ER-0001" sold-out>`: a
 * "Notify me" button that adds the watch, shows "Watching", and removes it when pressed again.
 *
 * Attributes: `terms` (with `phrase`, `category`, `notify`) or `sku` (with `sold-out`, `on`),
 * `max-price`, `label`, `watching-label`, `product-name` (for the accessible name). Reflects
 * `state`: "idle" | "busy" | "watching" | "error". Parts: `button` (plus `watching`), `label`,
 * `message`. Events (bubbling, composed): `percolert-watch`, `percolert-unwatch`,
 * `percolert-error`.
 */
export declare class PercolertNotify extends HTMLElement {
  static readonly observedAttributes: string[];
  /** The client to use (default: Percolert.getDefault()). */
  client: Percolert | null;
  /** The user's watch this button stands for, or null. */
  readonly watch: Watch | null;
  /** The watch spec a press adds. */
  readonly spec: WatchSpec;
  connectedCallback(): void;
  disconnectedCallback(): void;
  attributeChangedCallback(): void;
}

/**
 * `<percolert-alerts>`: alerts and product alerts as toasts and as a list (newest first); a
 * greeting's recent alerts and the "while you were away" product alerts are listed, not
 * toasted.
 *
 * Attributes: `mode` ("both" | "toasts" | "list"), `kinds` (any of "alert product_alert
 * watch_too_broad"), `max-items` (20), `max-toasts` (4), `toast-seconds` (8), `currency`
 * ("USD"), `locale`, `empty-text`, `product-url` (a template such as "/products/{sku}": each
 * product an alert shows links there; a click reports the visit, `client.visited(alert)`,
 * and dispatches `percolert-visit`). Parts: `list`, `item`, `item-time`, `item-text`,
 * `empty`, `toasts`, `toast`, `toast-body`, `toast-title`, `toast-text`, `toast-close`,
 * `product-link`. Events (bubbling, composed): `percolert-visit`, `percolert-error` (a visit
 * that could not be reported).
 */
export declare class PercolertAlerts extends HTMLElement {
  static readonly observedAttributes: string[];
  client: Percolert | null;
  /** Show a toast of the page's own; null in "list" mode. */
  toast(title: string, text?: string, kind?: string): HTMLElement | null;
  /** Empty the list and the toasts. */
  clear(): void;
  connectedCallback(): void;
  disconnectedCallback(): void;
  attributeChangedCallback(): void;
}

declare global {
  interface HTMLElementTagNameMap {
    "percolert-notify": PercolertNotify;
    "percolert-alerts": PercolertAlerts;
  }
  interface HTMLElementEventMap {
    "percolert-watch": CustomEvent<NotifyEventDetail>;
    "percolert-unwatch": CustomEvent<NotifyEventDetail>;
    "percolert-error": CustomEvent<NotifyErrorDetail>;
    "percolert-visit": CustomEvent<VisitEventDetail>;
  }
}
