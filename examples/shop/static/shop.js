// The shop's page: its own login, Percolert's SDK for search, "Notify me" and alerts.
import { Percolert } from "percolert/percolert.js";
import "percolert/components.js";

const $ = (id) => document.getElementById(id);
const money = new Intl.NumberFormat(undefined, { style: "currency", currency: "USD" });
const root = document.documentElement;
const customer = root.dataset.customer || null;

// The shop's backend vouches for its logged-in customer: a fresh token whenever the SDK asks
// (before a socket, ahead of expiry, after a refusal). Logged out: anonymous.
async function shopToken() {
  const reply = await fetch("/token", { credentials: "same-origin" });
  if (reply.status === 401) return null; // logged out meanwhile
  if (!reply.ok) throw new Error(`the shop could not issue a token (${reply.status})`);
  return (await reply.json()).token;
}

const client = new Percolert({
  baseUrl: root.dataset.percolert,
  ...(customer ? { getToken: shopToken } : {}),
});
Percolert.setDefault(client); // the components use it

// --- who is here ---------------------------------------------------------------------------

$("login").hidden = customer !== null;
$("logout").hidden = customer === null;
$("customer").textContent = customer ?? "";

// The shop gave no token (its session ended, say): alerts stop until the customer is back.
$("reconnect").addEventListener("click", () => client.connect());

client.addEventListener("status", (event) => {
  const { status, retryIn, error } = event.detail;
  $("connection").dataset.state = status;
  // An erased account is gone: nothing to reconnect to until the customer logs in anew.
  $("reconnect").hidden = status !== "unauthorized" || error?.code === "account_erased";
  const texts = { live: "Live", connecting: "Connecting…", unauthorized: "Logged out of alerts" };
  $("connection-text").textContent =
    texts[status] ?? (status === "offline" ? `Offline — retrying in ${Math.round((retryIn ?? 0) / 1000)} s` : status);
});

// --- watches -------------------------------------------------------------------------------

function renderWatches(watches) {
  const list = $("watches");
  list.replaceChildren();
  for (const watch of watches.filter((w) => !w.is_default)) {
    const item = $("watch-template").content.firstElementChild.cloneNode(true);
    item.dataset.id = watch.id;
    item.querySelector(".terms").textContent = watch.sku ? `${watch.terms} (${watch.sku})` : watch.terms;
    item.querySelector(".remove").addEventListener("click", () => {
      client.removeWatch(watch.id).catch((error) => { $("status").textContent = error.message; });
    });
    list.append(item);
  }
}

client.addEventListener("hello", (event) => {
  if (event.detail.watches) renderWatches(event.detail.watches);
});
client.addEventListener("watches_changed", (event) => renderWatches(event.detail.watches));

// --- search --------------------------------------------------------------------------------

function renderResults(response) {
  const list = $("results");
  list.replaceChildren();
  for (const hit of response.results) {
    const item = $("result-template").content.firstElementChild.cloneNode(true);
    item.dataset.sku = hit.id;
    item.querySelector(".name").textContent = hit.product_name;
    item.querySelector(".price").textContent = money.format(hit.price);
    const stock = item.querySelector(".stock");
    stock.textContent = hit.in_stock ? "in stock" : "sold out";
    stock.classList.toggle("sold-out", !hit.in_stock);
    const notify = item.querySelector("percolert-notify");
    notify.setAttribute("sku", hit.id);
    notify.setAttribute("product-name", hit.product_name);
    if (!hit.in_stock) notify.setAttribute("sold-out", "");
    list.append(item);
  }
}

$("search").addEventListener("submit", async (event) => {
  event.preventDefault();
  const query = $("q").value.trim();
  if (!query) return;
  $("status").textContent = "Searching…";
  try {
    const response = await client.search(query);
    renderResults(response);
    $("status").textContent = `${response.total} result${response.total === 1 ? "" : "s"}`;
    $("notify-search").setAttribute("terms", query);
    $("watch-search").hidden = false;
  } catch (error) {
    $("status").textContent = error.message;
  }
});

// --- at login: this browser's anonymous watches move into the account ---------------------

// The shop's backend says when: on the first page after a genuine login, once (never from a
// URL parameter, which another site could link to).
async function start() {
  if (customer && root.dataset.merge === "1") {
    try {
      const merged = await client.mergeAnonymousWatches();
      if (merged.moved > 0) {
        $("merged").textContent = `Moved ${merged.moved} watch${merged.moved === 1 ? "" : "es"} into your account.`;
        $("merged").hidden = false;
      }
    } catch (error) {
      $("status").textContent = error.message;
    }
  }
  client.connect();
}

start();
