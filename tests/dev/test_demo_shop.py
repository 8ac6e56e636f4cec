"""`percolert up --shop`: the example shop beside the demo, on its own origin, whose tokens
(RS256, from its JWKS) Percolert takes; the shop rotates its key and both keys' tokens work."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import delete_indices, make_settings
from tests.dev.test_demo import Up, running_up
from tests.servers import free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


async def shop_demo_ready(up: Up, shop: str) -> list[str]:
    """What `percolert up --shop` printed, once both it and the shop answer."""
    printed: list[str] = []

    def both_ready() -> bool:
        printed.extend(up.new_lines())
        # The curl line comes once the server answers /readyz.
        if not any(line.startswith("curl ") for line in printed):
            return False
        try:
            return httpx.get(f"{shop}/.well-known/jwks.json").status_code == 200
        except httpx.TransportError:
            return False

    await wait_until(both_ready, timeout=120, what="the demo to be ready")
    return printed


async def test_up_with_the_shop_takes_its_customers_tokens(
    elasticsearch_url: str, tmp_path: Path
) -> None:
    settings = make_settings(elasticsearch_url, state_dir=tmp_path / "state")
    port, shop_port = free_port(), free_port()
    try:
        with running_up(
            settings, "--port", str(port), "--shop", "--shop-port", str(shop_port)
        ) as up:
            shop = f"http://127.0.0.1:{shop_port}"
            percolert = f"http://127.0.0.1:{port}"
            printed = await shop_demo_ready(up, shop)
            assert any(f"the example shop: {shop}" in line for line in printed)
            async with (
                httpx.AsyncClient(base_url=shop, timeout=15) as customer,
                httpx.AsyncClient(base_url=percolert, timeout=15) as api,
            ):
                page = await customer.get("/")
                assert page.status_code == 200
                assert f"{percolert}/static/sdk/" in page.text
                login = await customer.post("/login", data={"name": "olivia"})
                assert login.status_code == 303
                old = (await customer.get("/token")).json()["token"]
                created = await api.post(
                    "/api/watches",
                    json={"terms": "kindle"},
                    headers={"Authorization": f"Bearer {old}"},
                )
                assert created.status_code == 201, created.text
                # The shop rotates its key; the old one stays published meanwhile.
                assert (await customer.post("/admin/rotate-key")).status_code == 200
                new = (await customer.get("/token")).json()["token"]
                for token in (new, old):
                    listed = await api.get(
                        "/api/watches", headers={"Authorization": f"Bearer {token}"}
                    )
                    assert listed.status_code == 200, listed.text
                    terms = [w["terms"] for w in listed.json()["watches"]]
                    assert "kindle" in terms
                # The storefront may load the SDK's modules from Percolert.
                module = await api.get("/static/sdk/percolert.js", headers={"Origin": shop})
                assert module.headers["access-control-allow-origin"] == shop
    finally:
        await delete_indices(settings)
