// Compiled by the test suite with `tsc --noEmit --strict` (tests/web/test_sdk_types.py): the
// declarations must describe the SDK as a shop would use it. Not part of the package.
import {
  CloseCode,
  Percolert,
  PercolertError,
  PROTOCOL,
  type AlertMessage,
  type DataExport,
  type MergeResult,
  type ProductAlertMessage,
  type SearchResponse,
  type Status,
  type Watch,
  type WatchSpec,
} from "./percolert.js";
import { describeAlert, PercolertAlerts, PercolertNotify, productUrl, watchName } from "./components.js";

const anonymous = new Percolert();
const shop = new Percolert({
  baseUrl: "https://alerts.example.com",
  getToken: async ({ reason }) => (reason === "expiring" ? "fresh.jwt.token" : null),
  reconnect: { initialDelay: 500, maxDelay: 10_000 },
});
Percolert.setDefault(shop);
const fallback: Percolert | null = Percolert.getDefault();
Percolert.defaultChanges.addEventListener("change", () => undefined);

anonymous.addEventListener("status", (event) => {
  const status: Status = event.detail.status;
  const retry: number | undefined = event.detail.retryIn;
  console.log(status, retry, event.detail.error?.code);
});
anonymous.addEventListener("alert", (event) => {
  const alert: AlertMessage = event.detail;
  // @ts-expect-error: an alert never carries what anyone typed
  console.log(alert.query);
  const seq: number = alert.seq;
  const names: string[] = alert.found.map((product) => product.product_name);
  console.log(seq, names, describeAlert(alert).title, watchName(alert.watch));
  // Followed to the shop: the alert, or its watch's id; never unhandled when not awaited.
  const counted: Promise<void> = anonymous.visited(alert);
  void anonymous.visited(alert.watch.id).catch((error: unknown) => console.log(error, counted));
  // @ts-expect-error: a visit is of an alert or a watch id, not of a product
  void anonymous.visited(alert.found[0]);
});
anonymous.addEventListener("product_alert", (event) => {
  const alert: ProductAlertMessage = event.detail;
  const previous: number | null = alert.product.previous_price;
  console.log(alert.change, previous, alert.watch.sku ?? alert.watch.terms);
  void anonymous.visited(alert);
  const page: string | null = productUrl("/products/{sku}", alert.product);
  console.log(page);
});
anonymous.addEventListener("away", (event) => console.log(event.detail.alerts.length, event.detail.more));
anonymous.addEventListener("watches_changed", (event) => {
  const watches: Watch[] = event.detail.watches;
  console.log(watches.filter((watch) => !watch.is_default && watch.sku === null));
});
anonymous.addEventListener("watch_too_broad", (event) => console.log(event.detail.share, event.detail.until));
anonymous.addEventListener("protocol_mismatch", (event) => {
  if (event.detail.received !== PROTOCOL) anonymous.close();
});
anonymous.addEventListener("hello", (event) => console.log(event.detail.last_seq, event.detail.away?.more));
anonymous.addEventListener("error", (event) => console.log(event.detail.code, event.detail.status));
anonymous.connect();

async function use(): Promise<void> {
  const found: SearchResponse = await anonymous.search("kindle", { size: 20 });
  const first = found.results[0];
  if (first !== undefined && !first.in_stock) {
    await anonymous.addWatch({ sku: first.id, on: ["back_in_stock"] });
    await anonymous.addWatch({ sku: first.id, max_price: 100 });
  }
  const spec: WatchSpec = { terms: "kindle", category: "e-readers", max_price: 120, notify: "products" };
  const watch: Watch = await anonymous.addWatch(spec);
  const changed: Watch = await anonymous.setNotify(watch.id, "both");
  await anonymous.removeWatch(changed.id);
  const categories: string[] = await anonymous.categories();
  const listed: Watch[] = await anonymous.watches();
  const merged: MergeResult = await shop.mergeAnonymousWatches();
  const exported: DataExport = await shop.exportMyData();
  const mine: Watch[] = exported.watches;
  console.log(categories, listed, merged.moved + merged.duplicates + merged.over_cap + merged.refused);
  console.log(exported.identity.kind, mine.length, exported.truncated);
  // @ts-expect-error: a watch is of words or of one product, never both
  await anonymous.addWatch({ terms: "kindle", sku: "ER-0001" });
  // @ts-expect-error: what a watch alerts on is one of three
  await anonymous.setNotify(watch.id, "sometimes");
  // @ts-expect-error: a product watch alerts on its product's changes, never on `new`
  await anonymous.addWatch({ sku: "ER-0001", on: ["new"] });
  try {
    await anonymous.addWatch({ terms: "the" });
  } catch (error) {
    if (error instanceof PercolertError) console.log(error.code, error.status, error.message);
  }
  console.log(CloseCode.UNAUTHORIZED === 4401, anonymous.lastSeq, anonymous.watchList?.length, anonymous.hello?.protocol);
}

const button: PercolertNotify = document.createElement("percolert-notify");
button.setAttribute("sku", "ER-0001");
button.toggleAttribute("sold-out", true);
button.client = shop;
button.addEventListener("percolert-watch", (event) => console.log(event.detail.watch.id));
button.addEventListener("percolert-error", (event) => console.log(event.detail.error.message));
const panel: PercolertAlerts = document.createElement("percolert-alerts");
panel.setAttribute("mode", "toasts");
panel.setAttribute("product-url", "/products/{sku}");
panel.addEventListener("percolert-visit", (event) => {
  const { alert, product, url } = event.detail;
  const watchId: string = alert.watch.id;
  if (event.cancelable) event.preventDefault(); // the shop's router instead
  console.log(watchId, product.sku, new URL(url).pathname);
});
const toast: HTMLElement | null = panel.toast("Saved", "Your watch is stored");
console.log(button.watch?.id, button.spec, toast, fallback);
void use();
shop.close();
