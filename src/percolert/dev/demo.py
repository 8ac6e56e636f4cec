"""What `percolert up` adds for the demo: an admin token (so that the admin API exists) and
the exact `curl` that puts a cheaper product, printed once the server answers."""

from __future__ import annotations

import json
import shlex
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from percolert.core.settings import Settings
from percolert.core.state_dir import kept_secret

# What the demo's curl takes off the price: enough for any watch's minimum drop.
_DISCOUNT = 0.2
_READY_TIMEOUT_SECONDS = 120.0
_POLL_SECONDS = 0.2


def admin_token(settings: Settings) -> str:
    """PERCOLERT_ADMIN_TOKEN, or (development) a random token kept in the state directory,
    made once (as the development session secret is)."""
    if settings.admin_token:
        return settings.admin_token
    return kept_secret(settings.state_dir, "admin_token")


def cheaper_product(catalog: Path) -> dict[str, object] | None:
    """The catalog's first Kindle in stock (else its first product in stock) at a lower
    price; None when the catalog has no product in stock."""
    chosen: dict[str, object] | None = None
    with catalog.open("rb") as lines:
        for raw in lines:
            try:
                product = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(product, dict) or not product.get("in_stock", True):
                continue
            if chosen is None:
                chosen = product
            if "kindle" in str(product.get("product_name", "")).lower():
                chosen = product
                break
    if chosen is None:
        return None
    price = chosen.get("price")
    if isinstance(price, int | float):
        chosen["price"] = round(price * (1 - _DISCOUNT), 2)
    return chosen


def cheaper_product_curl(base_url: str, token: str, catalog: Path) -> str | None:
    """A curl command putting `cheaper_product` in the catalog; None when there is none.
    `token` goes inside double quotes: a generated token (URL-safe characters) or
    `$PERCOLERT_ADMIN_TOKEN` (expanded by the shell, so that a token of the environment is
    not printed)."""
    chosen = cheaper_product(catalog)
    if chosen is None:
        return None
    sku = str(chosen.pop("sku"))
    return (
        f"curl -X PUT {base_url}/api/admin/products/{sku} \\\n"
        f'  -H "Authorization: Bearer {token}" \\\n'
        "  -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(json.dumps(chosen))}"
    )


def announce_when_ready(base_url: str, text: str, *, token: str | None = None) -> None:
    """Print `text` once `base_url` answers /readyz (in the background: the caller goes on
    to serve); nothing if it never does within two minutes. `token`: the metrics token,
    when one is set (PERCOLERT_METRICS_TOKEN)."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}

    def wait_and_print() -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                # Our own http:// address, never a URL from elsewhere.
                request = urllib.request.Request(f"{base_url}/readyz", headers=headers)  # noqa: S310
                with urllib.request.urlopen(request, timeout=2):  # noqa: S310
                    print(text, flush=True)  # 2xx: urlopen raises on a 503
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(_POLL_SECONDS)

    threading.Thread(target=wait_and_print, name="demo-announce", daemon=True).start()
