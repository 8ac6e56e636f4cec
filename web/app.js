// Percolert page: the SDK's first user. The client (web/sdk/percolert.js) keeps the socket
// open, resumes after a drop with nothing missed or twice, and calls the API; the components
// (web/sdk/components.js) show the toasts, the recent alerts and each result's "Notify me".
// Every piece of data is written with textContent, never parsed as HTML.
import { Percolert } from "./sdk/percolert.js";
import { CHANGE_LABELS, watchName } from "./sdk/components.js";

const $ = (id) => document.getElementById(id);
const money = new Intl.NumberFormat(undefined, { style: "currency", currency: "USD" });

const client = new Percolert(); // this page's own server, anonymous: a session cookie
Percolert.setDefault(client); // for the components

function fromTemplate(id) {
  return $(id).content.firstElementChild.cloneNode(true);
}

function setStatus(element, text, isError = false) {
  element.textContent = text;
  element.classList.toggle("error", isError);
}

function toast(title, text) {
  $("toasts").toast(title, text);
}

// --- search -------------------------------------------------------------------------------

function notifyButton(hit) {
  // A watch on this one product: back in stock (when sold out) or cheaper.
  const button = document.createElement("percolert-notify");
  button.setAttribute("sku", hit.id);
  button.setAttribute("product-name", hit.product_name);
  button.toggleAttribute("sold-out", !hit.in_stock);
  return button;
}

function renderResults(response) {
  const list = $("results");
  list.replaceChildren();
  for (const hit of response.results) {
    const item = fromTemplate("result-template");
    item.dataset.sku = hit.id;
    item.querySelector(".name").textContent = hit.product_name;
    item.querySelector(".price").textContent = money.format(hit.price);
    item.querySelector(".brand").textContent = hit.brand;
    item.querySelector(".category").textContent = hit.category;
    item.querySelector(".stock").textContent = hit.in_stock ? "in stock" : "out of stock";
    item.querySelector(".description").textContent = hit.description;
    item.querySelector(".result-foot").append(notifyButton(hit));
    list.append(item);
  }
  const shown = response.results.length;
  setStatus($("status"), `${response.total} result${response.total === 1 ? "" : "s"}` +
    (shown < response.total ? `, top ${shown}` : "") + ` in ${response.took_ms} ms`);
}

async function search(text) {
  setStatus($("status"), "Searching…");
  try {
    renderResults(await client.search(text, { size: 20 }));
    $("watch-terms").value = text;
    $("watch-this").hidden = false;
    setStatus($("watch-status"), "");
  } catch (error) {
    $("results").replaceChildren();
    setStatus($("status"), error.message || "Cannot reach the server.", true);
  }
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("q").value.trim();
  if (text) search(text);
});

// A product of an alert, followed: this page has no product pages, so it searches for it.
function showProduct(product) {
  $("q").value = product.product_name;
  search(product.product_name);
}

// --- watches ------------------------------------------------------------------------------

const PRODUCT_EVENTS = { back_in_stock: "back in stock", price_drop: "cheaper" };

function describeConditions(watch) {
  const parts = [];
  if (watch.sku) {
    parts.push(`product ${watch.sku}`);
    const on = (watch.on || []).map((event) => PRODUCT_EVENTS[event] || event);
    if (on.length > 0) parts.push(`when ${on.join(" or ")}`);
  }
  if (watch.phrase) parts.push("exact phrase");
  if (watch.category) parts.push(`in ${watch.category}`);
  if (watch.max_price !== null && watch.max_price !== undefined) parts.push(`under ${money.format(watch.max_price)}`);
  return parts.join(" · ");
}

function renderWatches(watches) {
  const list = $("watches");
  list.replaceChildren();
  for (const watch of watches) {
    const item = fromTemplate("watch-template");
    const name = watch.terms || watch.sku;
    item.querySelector(".terms").textContent = name;
    item.querySelector(".conditions").textContent = describeConditions(watch);
    item.querySelector(".badge").hidden = !watch.is_default;
    const remove = item.querySelector(".remove");
    const notify = item.querySelector(".notify");
    if (watch.is_default) {
      remove.remove();
      notify.remove(); // everyone's: not a shopper's to change
    } else {
      if (watch.sku) {
        notify.remove(); // a product watch says what it alerts on by its events
      } else {
        notify.value = watch.notify;
        notify.setAttribute("aria-label", `Tell me about, for watch ${name}`);
        notify.addEventListener("change", () => changeNotify(watch, notify));
      }
      remove.setAttribute("aria-label", `Remove watch ${name}`);
      remove.addEventListener("click", async () => {
        remove.disabled = true;
        try {
          await client.removeWatch(watch.id);
        } catch (error) {
          remove.disabled = false;
          toast("Could not remove the watch", error.message);
        }
      });
    }
    list.append(item);
  }
  $("no-watches").hidden = watches.some((watch) => !watch.is_default);
}

const WATCHING = {
  both: "You'll be alerted when someone else searches for it, and when a matching product arrives, gets cheaper or is back.",
  searches: "You'll be alerted when someone else searches for it.",
  products: "You'll be alerted when a matching product arrives, gets cheaper or is back.",
};

async function changeNotify(watch, select) {
  const wanted = select.value;
  select.disabled = true;
  try {
    // The list is redrawn with the stored watch; until then the select shows `wanted`.
    watch.notify = (await client.setNotify(watch.id, wanted)).notify;
  } catch (error) {
    select.value = watch.notify;
    toast("Could not change the watch", error.message);
  } finally {
    select.disabled = false;
  }
}

$("watch-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const spec = {
    terms: $("watch-terms").value.trim(),
    phrase: $("watch-phrase").checked,
    notify: $("watch-notify").value,
  };
  if ($("watch-category").value) spec.category = $("watch-category").value;
  if ($("watch-max-price").value) spec.max_price = Number($("watch-max-price").value);
  try {
    const watch = await client.addWatch(spec);
    setStatus($("watch-status"), `Watching “${watch.terms}”. ${WATCHING[watch.notify]}`);
  } catch (error) {
    setStatus($("watch-status"), error.message, true);
  }
});

async function loadCategories() {
  try {
    for (const name of await client.categories()) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      $("watch-category").append(option);
    }
  } catch {
    // The category filter is optional; watching still works without the list.
  }
}

// --- product alerts -----------------------------------------------------------------------
// Search alerts are the components' (#toasts, #recent). Product alerts are toasted there too
// and shown here as cards whose "Show" searches for the product. The client delivers each
// alert once: a card is never shown twice. Following an alert to a product (here or in the
// components) is a visit the shop's demand view counts (client.visited).

function productCard(alert) {
  const item = fromTemplate("product-card-template");
  const product = alert.product;
  item.dataset.id = alert.id;
  item.dataset.change = alert.change;
  item.querySelector(".label").textContent = CHANGE_LABELS[alert.change] || alert.change;
  item.querySelector(".name").textContent = product.product_name;
  item.querySelector(".price").textContent = money.format(product.price);
  const old = item.querySelector(".old-price");
  // A drop, or back in stock at a lower price than before: the server sends the old price
  // only when the price fell.
  if (product.previous_price !== null && product.previous_price !== undefined) {
    old.textContent = money.format(product.previous_price);
    old.hidden = false;
  }
  item.querySelector(".brand").textContent = product.brand;
  item.querySelector(".category").textContent = product.category;
  if (alert.total > 1) {
    const names = (alert.more || []).map((card) => card.product_name).join(", ");
    const more = item.querySelector(".product-more");
    more.textContent = `and ${alert.total - 1} more` + (names ? `: ${names}` : "");
    more.hidden = false;
  }
  item.querySelector(".product-watch").textContent = watchName(alert.watch);
  const show = item.querySelector(".show");
  show.setAttribute("aria-label", `Show ${product.product_name}`);
  show.addEventListener("click", () => {
    client.visited(alert); // never rejects unhandled: nothing to wait for here
    showProduct(product);
  });
  return item;
}

function showProductAlert(alert) {
  $("product-alerts-list").prepend(productCard(alert));
  while ($("product-alerts-list").children.length > 20) $("product-alerts-list").lastElementChild.remove();
  $("product-alerts").hidden = false;
}

let awayMore = 0;

function showAway(away) {
  // Newest first, as sent; then how many more there were. A later greeting of this page
  // (after a reconnect) adds its newer ones above.
  $("away-list").prepend(...away.alerts.map(productCard));
  while ($("away-list").children.length > 20) {
    $("away-list").lastElementChild.remove();
    awayMore += 1;
  }
  awayMore += away.more;
  $("away-more").textContent = `and ${awayMore} more`;
  $("away-more").hidden = awayMore === 0;
  $("away").hidden = $("away-list").children.length === 0;
}

// --- the connection -----------------------------------------------------------------------

function setConnection(state, text) {
  $("connection").dataset.state = state;
  $("connection-text").textContent = text;
}

client.addEventListener("status", ({ detail }) => {
  if (detail.status === "live") setConnection("live", "Live");
  else if (detail.status === "offline") {
    setConnection("offline", `Offline — retrying in ${Math.round(detail.retryIn / 1000)} s`);
  } else if (detail.status === "connecting") setConnection("connecting", "Connecting…");
  else setConnection("offline", "Not connected");
});

client.addEventListener("protocol_mismatch", () => {
  // The server speaks another protocol: this page is stale. Once per tab: a page still
  // stale after reloading shows what it can rather than loop.
  if (!sessionStorage.getItem("percolert-reloaded")) {
    sessionStorage.setItem("percolert-reloaded", "1");
    client.close();
    location.reload();
  }
});

// The components' product links (product-url="?q={name}"): they report the visit; a plain
// click is followed here, without leaving the page (and its socket).
document.addEventListener("percolert-visit", (event) => {
  if (!event.cancelable) return; // another tab or window: the link's ?q= searches there
  event.preventDefault();
  showProduct(event.detail.product);
});

client.addEventListener("watches_changed", ({ detail }) => renderWatches(detail.watches));
client.addEventListener("product_alert", ({ detail }) => showProductAlert(detail));
client.addEventListener("away", ({ detail }) => showAway(detail));

loadCategories();
client.connect();
const asked = new URLSearchParams(location.search).get("q"); // a product link opened apart
if (asked && asked.trim()) {
  $("q").value = asked.trim();
  search(asked.trim());
}
