// Percolert page. Every piece of data is written with textContent, never parsed as HTML.
const form = document.getElementById("search-form");
const input = document.getElementById("q");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");
const template = document.getElementById("result-template");
const money = new Intl.NumberFormat(undefined, { style: "currency", currency: "USD" });

function showStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function render(response) {
  results.replaceChildren();
  for (const hit of response.results) {
    const item = template.content.firstElementChild.cloneNode(true);
    item.querySelector(".name").textContent = hit.product_name;
    item.querySelector(".price").textContent = money.format(hit.price);
    item.querySelector(".brand").textContent = hit.brand;
    item.querySelector(".category").textContent = hit.category;
    item.querySelector(".stock").textContent = hit.in_stock ? "in stock" : "out of stock";
    item.querySelector(".description").textContent = hit.description;
    results.append(item);
  }
  const shown = response.results.length;
  showStatus(`${response.total} result${response.total === 1 ? "" : "s"}` +
    (shown < response.total ? `, top ${shown}` : "") + ` in ${response.took_ms} ms`);
}

async function search(text) {
  showStatus("Searching…");
  try {
    const reply = await fetch(`/api/search?q=${encodeURIComponent(text)}&size=20`);
    const body = await reply.json();
    if (!reply.ok) {
      results.replaceChildren();
      showStatus(body.error ? body.error.message : `Search failed (${reply.status})`, true);
      return;
    }
    render(body);
  } catch (error) {
    showStatus("Cannot reach the server. Check your connection and try again.", true);
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (text) search(text);
});
