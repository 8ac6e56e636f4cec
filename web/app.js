// Percolert page. Every piece of data is written with textContent, never parsed as HTML.
const $ = (id) => document.getElementById(id);
const money = new Intl.NumberFormat(undefined, { style: "currency", currency: "USD" });

function fromTemplate(id) {
  return $(id).content.firstElementChild.cloneNode(true);
}

function setStatus(element, text, isError = false) {
  element.textContent = text;
  element.classList.toggle("error", isError);
}

// The page loads without a session; it asks for one here before its first API call and
// before each socket (a handshake cannot be relied on to set a cookie). Calls made together
// share one request, so that they do not start a session each.
let session = null;

function ensureSession(again = false) {
  if (session === null || again) {
    session = fetch("/api/session", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
    }).then(async (reply) => {
      if (reply.ok) return;
      const body = await reply.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : `request failed (${reply.status})`);
    });
    session.catch(() => { session = null; }); // asked again by the next call
  }
  return session;
}

async function api(path, options = {}) {
  await ensureSession();
  const reply = await fetch(path, { credentials: "same-origin", ...options });
  if (reply.status === 204) return null;
  const body = await reply.json().catch(() => ({}));
  if (!reply.ok) {
    throw new Error(body.error ? body.error.message : `request failed (${reply.status})`);
  }
  return body;
}

// --- search -------------------------------------------------------------------------------

function renderResults(response) {
  const list = $("results");
  list.replaceChildren();
  for (const hit of response.results) {
    const item = fromTemplate("result-template");
    item.querySelector(".name").textContent = hit.product_name;
    item.querySelector(".price").textContent = money.format(hit.price);
    item.querySelector(".brand").textContent = hit.brand;
    item.querySelector(".category").textContent = hit.category;
    item.querySelector(".stock").textContent = hit.in_stock ? "in stock" : "out of stock";
    item.querySelector(".description").textContent = hit.description;
    list.append(item);
  }
  const shown = response.results.length;
  setStatus($("status"), `${response.total} result${response.total === 1 ? "" : "s"}` +
    (shown < response.total ? `, top ${shown}` : "") + ` in ${response.took_ms} ms`);
}

async function search(text) {
  setStatus($("status"), "Searching…");
  try {
    renderResults(await api(`/api/search?q=${encodeURIComponent(text)}&size=20`));
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

// --- watches ------------------------------------------------------------------------------

function describeConditions(watch) {
  const parts = [];
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
    item.querySelector(".terms").textContent = watch.terms;
    item.querySelector(".conditions").textContent = describeConditions(watch);
    item.querySelector(".badge").hidden = !watch.is_default;
    const remove = item.querySelector(".remove");
    const notify = item.querySelector(".notify");
    if (watch.is_default) {
      remove.remove();
      notify.remove(); // everyone's: not a shopper's to change
    } else {
      notify.value = watch.notify;
      notify.setAttribute("aria-label", `Tell me about, for watch ${watch.terms}`);
      notify.addEventListener("change", () => changeNotify(watch, notify));
      remove.setAttribute("aria-label", `Remove watch ${watch.terms}`);
      remove.addEventListener("click", async () => {
        remove.disabled = true;
        try {
          await api(`/api/watches/${encodeURIComponent(watch.id)}`, { method: "DELETE" });
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
    // The socket's watches_changed redraws the list; until then the select shows `wanted`.
    const changed = await api(`/api/watches/${encodeURIComponent(watch.id)}`, {
      method: "PATCH",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ notify: wanted }),
    });
    watch.notify = changed.notify;
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
    const watch = await api("/api/watches", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(spec),
    });
    setStatus($("watch-status"), `Watching “${watch.terms}”. ${WATCHING[watch.notify]}`);
  } catch (error) {
    setStatus($("watch-status"), error.message, true);
  }
});

async function loadCategories() {
  try {
    const { categories } = await api("/api/categories");
    for (const name of categories) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      $("watch-category").append(option);
    }
  } catch {
    // The category filter is optional; watching still works without the list.
  }
}

// --- alerts -------------------------------------------------------------------------------

function toast(title, text) {
  const element = fromTemplate("toast-template");
  element.querySelector(".toast-title").textContent = title;
  element.querySelector(".toast-text").textContent = text;
  const dismiss = () => element.remove();
  element.querySelector(".toast-close").addEventListener("click", dismiss);
  $("toasts").append(element);
  while ($("toasts").children.length > 4) $("toasts").firstElementChild.remove();
  setTimeout(dismiss, 8000);
}

// Position of the newest alert this page has shown: sent on reconnect, so the server
// replays exactly what was missed. Alerts at or below it are never shown twice.
let lastSeq = null;

// A search alert says what matched (protocol 2): the watch, how many searches, and the
// products they found that fit the watch — never what anyone typed.
function matchedText(alert) {
  const searches = alert.count === 1 ? "A search" : `${alert.count} searches`;
  return `${searches} matched your watch “${alert.watch.terms}”`;
}

function foundText(alert) {
  if (alert.found.length === 0) return "nothing that fits it among the first results";
  return alert.found.map((p) => `${p.product_name} — ${money.format(p.price)}`).join(" · ");
}

function listAlert(alert) {
  const item = document.createElement("li");
  item.className = "recent-alert";
  const time = new Date(alert.at).toLocaleTimeString();
  item.textContent = `${time} — ${matchedText(alert)}: ${foundText(alert)}`;
  $("recent").prepend(item);
  while ($("recent").children.length > 20) $("recent").lastElementChild.remove();
}

function showAlert(alert) {
  if (lastSeq !== null && alert.seq <= lastSeq) return;
  lastSeq = alert.seq;
  toast(matchedText(alert), foundText(alert));
  listAlert(alert);
}

function showTooBroad(notice) {
  const until = new Date(notice.until).toLocaleTimeString();
  toast(
    `Your watch “${notice.watch.terms}” is too broad`,
    `it matched ${Math.round(notice.share * 100)}% of recent searches: its search alerts pause until ${until}; add a word to narrow it`,
  );
}

// --- product alerts -----------------------------------------------------------------------
// A separate stream from search alerts: their `seq` is another space, so they never touch
// `lastSeq`; cards are keyed by `id`, and an alert already shown is not shown again.
const shownProducts = new Set();
const changeLabels = { new: "new", price_drop: "price drop", back_in_stock: "back in stock" };

function productCard(alert) {
  const item = fromTemplate("product-card-template");
  const product = alert.product;
  item.dataset.id = alert.id;
  item.dataset.change = alert.change;
  item.querySelector(".label").textContent = changeLabels[alert.change] || alert.change;
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
  item.querySelector(".product-watch").textContent = `your watch “${alert.watch.terms}”`;
  const show = item.querySelector(".show");
  show.setAttribute("aria-label", `Show ${product.product_name}`);
  show.addEventListener("click", () => {
    $("q").value = product.product_name;
    search(product.product_name);
  });
  return item;
}

function showProductAlert(alert) {
  if (shownProducts.has(alert.id)) return;
  shownProducts.add(alert.id);
  $("product-alerts-list").prepend(productCard(alert));
  while ($("product-alerts-list").children.length > 20) $("product-alerts-list").lastElementChild.remove();
  $("product-alerts").hidden = false;
  const label = changeLabels[alert.change] || "product alert";
  toast(`${label[0].toUpperCase()}${label.slice(1)}: ${alert.product.product_name}`,
    `${money.format(alert.product.price)} — matches your watch “${alert.watch.terms}”`);
}

let awayMore = 0;

function showAway(away) {
  // Newest first, as sent; then how many more there were. A later greeting of this page
  // (after a reconnect) adds its newer ones above.
  const cards = away.alerts.filter((alert) => !shownProducts.has(alert.id)).map((alert) => {
    shownProducts.add(alert.id);
    return productCard(alert);
  });
  $("away-list").prepend(...cards);
  while ($("away-list").children.length > 20) {
    $("away-list").lastElementChild.remove();
    awayMore += 1;
  }
  awayMore += away.more;
  $("away-more").textContent = `and ${awayMore} more`;
  $("away-more").hidden = awayMore === 0;
  $("away").hidden = $("away-list").children.length === 0;
}

// The message shapes this page reads; a server speaking another protocol has a newer page.
const PROTOCOL = 2;

function greet(hello) {
  if (hello.protocol !== PROTOCOL) {
    // Once per tab: a page still stale after reloading shows what it can rather than loop.
    if (!sessionStorage.getItem("percolert-reloaded")) {
      sessionStorage.setItem("percolert-reloaded", "1");
      location.reload();
      return;
    }
  }
  if (hello.watches !== null) renderWatches(hello.watches);
  if (hello.away) showAway(hello.away);
  if (lastSeq === null) {
    // A fresh page: list this session's recent alerts without toasting them again.
    $("recent").replaceChildren();
    for (const alert of hello.recent) listAlert(alert);
    lastSeq = hello.last_seq;
  }
}

function setConnection(state, text) {
  $("connection").dataset.state = state;
  $("connection-text").textContent = text;
}

function connect() {
  let retryDelay = 1000;
  let pinger = null;
  let opened = false;

  const open = async () => {
    setConnection("connecting", "Connecting…");
    // On a reconnect, asked again: the cookie may have expired or the secret changed. A
    // refusal leaves the socket to fail and back off.
    await ensureSession(opened).catch(() => {});
    opened = true;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const resume = lastSeq === null ? "" : `?after=${lastSeq}`;
    const socket = new WebSocket(`${scheme}://${location.host}/ws${resume}`);
    socket.addEventListener("open", () => {
      pinger = setInterval(() => socket.send(JSON.stringify({ type: "ping" })), 25000);
    });
    socket.addEventListener("message", (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch { return; }
      if (message.type === "hello") {
        // Connected for real only once greeted: a socket the server closes right after the
        // handshake (too many open tabs, say) keeps backing off.
        // Live only then too: alerts stored before the greeting are listed in it, not sent.
        retryDelay = 1000;
        setConnection("live", "Live");
        greet(message);
      } else if (message.type === "watches_changed") renderWatches(message.watches);
      else if (message.type === "alert") showAlert(message);
      else if (message.type === "product_alert") showProductAlert(message);
      else if (message.type === "watch_too_broad") showTooBroad(message);
    });
    socket.addEventListener("close", () => {
      clearInterval(pinger);
      // Back off exponentially with jitter so a restarted server is not stampeded.
      const delay = Math.min(retryDelay, 30000) * (0.75 + Math.random() * 0.5);
      retryDelay = Math.min(retryDelay * 2, 30000);
      setConnection("offline", `Offline — retrying in ${Math.round(delay / 1000)} s`);
      setTimeout(open, delay);
    });
  };
  open();
}

loadCategories();
connect();
