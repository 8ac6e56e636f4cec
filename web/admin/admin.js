// Percolert's demand view, for the shop's admin: what shoppers search for, what they find
// nothing for, what they wait for, and what the alerts do. It reads the admin API of this
// same server (a session cookie after signing in with the admin token; every write carries
// the session's CSRF token) and draws its charts with the vendored uPlot. Searches, labels
// and names are shoppers' and shop's words: every one is written with textContent, never
// parsed as HTML.

const $ = (id) => document.getElementById(id);

const LIVE_EVERY_MS = 5000;
const INSIGHTS_EVERY_MS = 30000;
const LIVE_KEPT = 60; // readings in the live chart: five minutes
const NOTICE_MS = 20000;
const COLORS = { searches: "#2d6cdf", noResults: "#c27c0e", alerts: "#1f9d55", muted: "#5d6b7e", line: "#e3e8ef" };

const clock = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

let csrf = null; // the session's, once signed in
let insightsTimer = null;
let liveTimer = null;
let insightsGeneration = 0; // a reply for an older request (another window) is dropped
let liveInFlight = false;
let noticeTimer = null;
let timelinePlot = null;
let livePlot = null;
const liveReadings = [[], [], []]; // x (epoch seconds), searches/s, alerts/s

// --- the API ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", cache: "no-store", headers: {} };
  if (method !== "GET" && csrf !== null) init.headers["X-CSRF-Token"] = csrf;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let reply;
  try {
    reply = await fetch(path, init);
  } catch {
    throw new ApiError(0, "network", "Cannot reach the server.");
  }
  if (reply.status === 204) return null;
  const data = await reply.json().catch(() => null);
  if (!reply.ok) {
    const error = data && typeof data === "object" ? data.error : null;
    throw new ApiError(
      reply.status,
      (error && error.code) || "http",
      (error && error.message) || `The server answered ${reply.status}.`,
    );
  }
  return data;
}

// A 401 once signed in: the session ended (expired, or signed out in another tab).
function failed(error, where) {
  if (error.status === 401) {
    showLogin("Your session has ended: sign in again.");
    return;
  }
  setStatus(`${where}: ${error.message}`, true);
}

// --- small helpers ------------------------------------------------------------------------

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function showNotice(text, isError = false) {
  const notice = $("notice");
  notice.textContent = text;
  notice.classList.toggle("error", isError);
  notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    notice.hidden = true;
  }, NOTICE_MS);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const isMissing = (value) => value === null || value === undefined;

// Table cells: text, a number (plain digits, right-aligned), or nodes.
function textCell(value) {
  return element("td", "", isMissing(value) || value === "" ? "—" : String(value));
}

function numberCell(value, digits) {
  if (isMissing(value)) return element("td", "num", "—");
  return element("td", "num", digits === undefined ? String(value) : Number(value).toFixed(digits));
}

const priceCell = (value) => numberCell(value, 2);
const yesNo = (value) => (isMissing(value) ? "—" : value ? "yes" : "no");

function nodesCell(...nodes) {
  const cell = element("td", "actions");
  cell.append(...nodes);
  return cell;
}

function trend(count, previous) {
  if (previous === 0) return count === 0 ? "±0" : "new";
  const change = count - previous;
  if (change > 0) return `+${change}`;
  if (change < 0) return `\u2212${-change}`;
  return "±0";
}

function trendKind(count, previous) {
  if (previous === 0 && count > 0) return "new";
  return count > previous ? "up" : count < previous ? "down" : "same";
}

function trendCell(count, previous) {
  const cell = numberCell(trend(count, previous));
  cell.classList.add("trend");
  cell.dataset.trend = trendKind(count, previous);
  return cell;
}

function percent(rate) {
  if (isMissing(rate)) return null;
  return `${Math.round(rate * 1000) / 10}%`;
}

// Fills table#id with a row per item (`cells(item)`: its <td>s in the column order), or one
// "nothing yet" row; data-loaded="true" tells a filled table from one not yet loaded.
function fillTable(id, items, cells) {
  const table = $(id);
  const rows = items.map((item) => {
    const row = document.createElement("tr");
    row.append(...cells(item, row));
    return row;
  });
  if (rows.length === 0) {
    const row = element("tr", "empty");
    const cell = element("td", "", "nothing yet");
    cell.colSpan = table.tHead.rows[0].cells.length;
    row.append(cell);
    rows.push(row);
  }
  table.tBodies[0].replaceChildren(...rows);
  table.dataset.loaded = "true";
}

function clearTables() {
  for (const table of document.querySelectorAll("#dashboard table.data")) {
    table.tBodies[0].replaceChildren();
    delete table.dataset.loaded;
  }
  $("totals").replaceChildren();
}

// --- actions ------------------------------------------------------------------------------

function promoteButton(text) {
  const button = element("button", "promote", "Make default watch");
  button.type = "button";
  button.setAttribute("aria-label", `Make default watch: ${text}`);
  button.addEventListener("click", () => promote(text, button));
  return button;
}

async function promote(text, button) {
  button.disabled = true;
  try {
    const watch = await api("POST", "/admin/api/default-watches", { text });
    const label = (watch && (watch.terms || watch.text)) || text;
    showNotice(`Default watch "${label}" added`);
    await refreshInsights();
  } catch (error) {
    button.disabled = false;
    if (error.status === 401) failed(error, "");
    else showNotice(`Could not add the default watch "${text}": ${error.message}`, true);
  }
}

function retireButton(watch) {
  const button = element("button", "retire", "Retire");
  button.type = "button";
  button.setAttribute("aria-label", `Retire: ${watch.label}`);
  button.addEventListener("click", () => retire(watch, button));
  return button;
}

async function retire(watch, button) {
  if (!confirm(`Retire the default watch "${watch.label}"? Shoppers will no longer be alerted by it.`)) return;
  button.disabled = true;
  try {
    await api("DELETE", `/admin/api/default-watches/${encodeURIComponent(watch.watch_id)}`);
    showNotice(`Default watch "${watch.label}" retired`);
    await refreshInsights();
  } catch (error) {
    button.disabled = false;
    if (error.status === 401) failed(error, "");
    else showNotice(`Could not retire "${watch.label}": ${error.message}`, true);
  }
}

// --- rendering ----------------------------------------------------------------------------

function stat(key, label, value, previous) {
  const item = element("div", "stat");
  item.dataset.key = key;
  const figure = element("span", "value", String(value));
  const change = element("span", "trend", trend(value, previous));
  change.dataset.trend = trendKind(value, previous);
  const before = element("span", "previous", `previous window: ${previous}`);
  item.append(figure, element("span", "label", label), change, before);
  return item;
}

function renderTotals(totals) {
  $("totals").replaceChildren(
    stat("searches", "searches", totals.searches, totals.previous_searches),
    stat("no_results", "found nothing", totals.no_results, totals.previous_no_results),
  );
}

function renderSearches(insights) {
  fillTable("top-searches", insights.top_searches, (search) => [
    textCell(search.text),
    numberCell(search.count),
    numberCell(search.previous),
    trendCell(search.count, search.previous),
    numberCell(search.results),
  ]);
  fillTable("no-result-searches", insights.no_result_searches, (search) => [
    textCell(search.text),
    numberCell(search.count),
    numberCell(search.previous),
    trendCell(search.count, search.previous),
    nodesCell(promoteButton(search.text)),
  ]);
  fillTable("watched-terms", insights.watched_terms, (term) => [
    textCell(term.term),
    numberCell(term.watches),
    nodesCell(promoteButton(term.term)),
  ]);
}

function renderProducts(insights) {
  fillTable("watched-products", insights.watched_products, (product) => [
    textCell(product.sku),
    textCell(product.name),
    priceCell(product.price),
    textCell(yesNo(product.in_stock)),
    numberCell(product.watchers),
  ]);
  fillTable("restock-queue", insights.restock_queue, (product) => [
    textCell(product.sku),
    textCell(product.name),
    priceCell(product.price),
    numberCell(product.watchers),
    numberCell(product.with_price),
    priceCell(product.price_min),
    priceCell(product.price_median),
    priceCell(product.price_max),
  ]);
}

function createdCell(iso) {
  const cell = element("td");
  const when = new Date(iso);
  if (!iso || Number.isNaN(when.getTime())) {
    cell.textContent = iso || "—";
    return cell;
  }
  const time = element("time", "", dateTime.format(when));
  time.dateTime = iso;
  cell.append(time);
  return cell;
}

function renderAlerts(insights) {
  fillTable("alerts-per-watch", insights.alerts_per_watch, (watch) => [
    textCell(watch.label),
    textCell(yesNo(watch.default)),
    numberCell(watch.alerts),
    numberCell(watch.reach),
    numberCell(watch.visits),
    numberCell(percent(watch.visit_rate)),
  ]);
  fillTable("default-watches", insights.default_watches, (watch, row) => {
    const unused = watch.reach === 0;
    row.classList.toggle("reaches-nobody", unused);
    const action = unused ? nodesCell(element("span", "unused", "reaches nobody"), retireButton(watch)) : nodesCell();
    return [
      textCell(watch.label),
      createdCell(watch.created_at),
      numberCell(watch.alerts),
      numberCell(watch.reach),
      numberCell(watch.visits),
      action,
    ];
  });
  fillTable("offsite", insights.offsite, (channel) => [
    textCell(channel.channel),
    numberCell(channel.delivered),
    numberCell(channel.pending),
    numberCell(channel.failed),
    numberCell(channel.suppressed),
  ]);
}

function renderLive(live) {
  $("live-searches").textContent = live.searches_per_second.toFixed(2);
  $("live-alerts").textContent = live.alerts_per_second.toFixed(2);
  $("live-shoppers").textContent = String(live.connected_shoppers);
  $("live-sockets").textContent = String(live.sockets);
  $("live-instances").textContent = String(live.instances);
  $("live-seconds").textContent = `over the last ${Math.round(live.seconds)} s`;
}

// --- charts -------------------------------------------------------------------------------

const AXIS = { stroke: COLORS.muted, grid: { stroke: COLORS.line }, ticks: { stroke: COLORS.line } };

// A chart in `target`: `series` ([label, colour] each) over the x range `xRange()` gives,
// x labelled by `xValues` (uPlot's dates and times by default).
function makePlot(target, { height, series, xRange, xValues }, data) {
  // Without the chart library the tables still show everything.
  if (typeof globalThis.uPlot !== "function" || target.clientWidth === 0) return null;
  const options = {
    width: Math.max(200, target.clientWidth),
    height,
    scales: {
      x: { time: true, range: () => xRange() },
      // Counts and rates: from zero up, never a range of nothing.
      y: { range: (plot, min, max) => globalThis.uPlot.rangeNum(0, Math.max(max ?? 0, 1), 0.1, true) },
    },
    series: [{}, ...series.map(([label, color]) => ({ label, stroke: color, width: 2 }))],
    axes: [xValues ? { ...AXIS, values: xValues, space: 90 } : AXIS, AXIS],
    cursor: { drag: { x: false, y: false } },
  };
  const plot = new globalThis.uPlot(options, data, target);
  let width = target.clientWidth;
  new ResizeObserver(() => {
    if (target.clientWidth > 0 && target.clientWidth !== width) {
      width = target.clientWidth;
      plot.setSize({ width: Math.max(200, width), height });
    }
  }).observe(target);
  return plot;
}

// The whole window on the x axis, however few its points.
let timelineRange = [0, 1];

function renderTimeline(insights) {
  const until = Date.parse(insights.until) / 1000;
  const end = Number.isNaN(until) ? Date.now() / 1000 : until;
  timelineRange = [end - insights.since, end];
  const points = [...insights.timeline].sort((a, b) => a.at - b.at);
  const data = [
    points.map((point) => point.at),
    points.map((point) => point.searches),
    points.map((point) => point.no_results),
    points.map((point) => point.alerts),
  ];
  if (timelinePlot === null) {
    const series = [
      ["searches", COLORS.searches],
      ["found nothing", COLORS.noResults],
      ["alerts", COLORS.alerts],
    ];
    timelinePlot = makePlot($("timeline-chart"), { height: 220, series, xRange: () => timelineRange }, data);
  } else {
    timelinePlot.setData(data);
  }
}

// The last LIVE_KEPT readings' time on the x axis, from the first reading on.
function liveRange() {
  const times = liveReadings[0];
  const end = times.length > 0 ? times[times.length - 1] : Date.now() / 1000;
  return [end - (LIVE_KEPT * LIVE_EVERY_MS) / 1000, end];
}

const clockLabels = (plot, splits) => splits.map((at) => clock.format(new Date(at * 1000)));

function addLiveReading(live) {
  liveReadings[0].push(Date.now() / 1000);
  liveReadings[1].push(live.searches_per_second);
  liveReadings[2].push(live.alerts_per_second);
  for (const values of liveReadings) values.splice(0, Math.max(0, values.length - LIVE_KEPT));
  const data = liveReadings.map((values) => [...values]);
  $("live-chart").dataset.readings = String(data[0].length);
  if (livePlot === null) {
    const series = [
      ["searches/s", COLORS.searches],
      ["alerts/s", COLORS.alerts],
    ];
    livePlot = makePlot($("live-chart"), { height: 140, series, xRange: liveRange, xValues: clockLabels }, data);
  } else {
    livePlot.setData(data);
  }
}

// --- refreshing ---------------------------------------------------------------------------

const WINDOW_LABELS = { "1h": "last hour", "24h": "last day", "7d": "last week" };

async function refreshInsights() {
  const since = $("window").value;
  const generation = ++insightsGeneration;
  let insights;
  try {
    insights = await api("GET", `/admin/api/insights?since=${encodeURIComponent(since)}`);
  } catch (error) {
    if (generation === insightsGeneration) failed(error, "Could not load the insights");
    return;
  }
  if (generation !== insightsGeneration || csrf === null) return; // superseded, or signed out
  renderTotals(insights.totals);
  renderSearches(insights);
  renderProducts(insights);
  renderAlerts(insights);
  renderLive(insights.live);
  renderTimeline(insights);
  const until = new Date(insights.until);
  setStatus(
    `The ${WINDOW_LABELS[since] || since}` +
      (Number.isNaN(until.getTime()) ? "" : ` until ${clock.format(until)}`) +
      ` · refreshed every ${INSIGHTS_EVERY_MS / 1000} s`,
  );
}

async function refreshLive() {
  if (liveInFlight) return;
  liveInFlight = true;
  try {
    const live = await api("GET", "/admin/api/live");
    if (csrf === null) return;
    renderLive(live);
    addLiveReading(live);
  } catch (error) {
    failed(error, "Could not load the live figures");
  } finally {
    liveInFlight = false;
  }
}

function stopRefreshing() {
  clearInterval(insightsTimer);
  clearInterval(liveTimer);
  insightsTimer = null;
  liveTimer = null;
  insightsGeneration += 1; // a reply on its way is dropped
}

function startRefreshing() {
  stopRefreshing();
  refreshInsights();
  refreshLive();
  insightsTimer = setInterval(refreshInsights, INSIGHTS_EVERY_MS);
  liveTimer = setInterval(refreshLive, LIVE_EVERY_MS);
}

$("window").addEventListener("change", () => {
  // Now, and every 30 s from now.
  clearInterval(insightsTimer);
  refreshInsights();
  insightsTimer = setInterval(refreshInsights, INSIGHTS_EVERY_MS);
});

// --- signing in and out -------------------------------------------------------------------

function showLogin(message) {
  stopRefreshing();
  csrf = null;
  clearTables();
  for (const values of liveReadings) values.length = 0;
  delete $("live-chart").dataset.readings;
  if (livePlot !== null) livePlot.setData([[], [], []]);
  $("dashboard").hidden = true;
  $("controls").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("admin-token").focus();
}

function signedIn(token) {
  csrf = token;
  $("login").hidden = true;
  $("login-error").textContent = "";
  $("admin-token").value = "";
  $("controls").hidden = false;
  $("dashboard").hidden = false;
  setStatus("Loading…");
  startRefreshing();
}

async function resume() {
  try {
    signedIn((await api("GET", "/admin/api/session")).csrf);
  } catch (error) {
    showLogin(error.status === 401 ? "" : error.message);
  }
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = $("admin-login");
  button.disabled = true;
  $("login-error").textContent = "";
  try {
    await api("POST", "/admin/api/session", { token: $("admin-token").value });
    signedIn((await api("GET", "/admin/api/session")).csrf);
  } catch (error) {
    $("login-error").textContent = error.message;
    $("admin-token").select();
  } finally {
    button.disabled = false;
  }
});

$("admin-logout").addEventListener("click", async () => {
  try {
    await api("POST", "/admin/api/logout", {});
  } catch (error) {
    if (error.status !== 401) {
      showNotice(`Could not sign out: ${error.message}`, true);
      return;
    }
  }
  showLogin("");
});

resume();
