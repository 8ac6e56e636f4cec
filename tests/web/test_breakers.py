"""Dependencies that hang rather than refuse: once a call has timed out, requests no longer
wait for them, and a background probe notices when they answer again."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import msgspec
import pytest

from percolert.core.settings import Settings
from tests.netproxy import DroppableProxy
from tests.servers import run_server
from tests.shoppers import Shopper
from tests.waiting import wait_until
from tests.web.test_limits import FOREVER, assert_rate_limited, limited

pytestmark = pytest.mark.anyio


@contextmanager
def proxied(url: str) -> Iterator[DroppableProxy]:
    proxy = DroppableProxy(int(url.rsplit(":", 1)[1]))
    try:
        yield proxy
    finally:
        proxy.close()


async def test_a_hanging_cluster_gets_503_at_once_until_it_answers(
    catalog_settings: Settings,
) -> None:
    with proxied(catalog_settings.elasticsearch_url) as proxy:
        settings = msgspec.structs.replace(
            catalog_settings, elasticsearch_url=proxy.url, elasticsearch_timeout=1.0
        )
        searches = f"{settings.index_prefix}-products/_search".encode()
        with run_server(settings) as url:
            async with Shopper(url) as shopper:
                assert (await shopper.http.get("/api/search", params={"q": "kindle"})).is_success
                proxy.hang()
                before = proxy.sent.count(searches)
                timed_out = await shopper.http.get("/api/search", params={"q": "kindle"})
                assert timed_out.status_code == 503, timed_out.text
                # Known to hang now: answered without asking the cluster.
                for _ in range(5):
                    refused = await shopper.http.get("/api/search", params={"q": "kindle"})
                    assert refused.status_code == 503
                    assert refused.json()["error"]["code"] == "elasticsearch_unavailable"
                    assert refused.headers["retry-after"].isdigit()
                ready = httpx.get(f"{url}/readyz", timeout=10)
                assert ready.json()["error"]["code"] == "elasticsearch_unavailable"
                assert proxy.sent.count(searches) == before + 1  # the one that timed out

                proxy.restore()

                async def answered() -> bool:
                    response = await shopper.http.get("/api/search", params={"q": "kindle"})
                    return response.is_success

                await wait_until(answered, timeout=30)
                assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200


async def test_a_hanging_limits_store_admits_at_once_and_limits_again_when_back(
    catalog_settings: Settings, redis_url: str
) -> None:
    with proxied(redis_url) as proxy:
        settings = limited(
            catalog_settings,
            rate_limit_storage=f"async+redis://127.0.0.1:{proxy.port}",
            limit_searches_per_session=f"2/{FOREVER}",
        )
        counted = settings.index_prefix.encode()  # the limits' keys carry it; probes do not
        with run_server(settings) as url:
            async with Shopper(url) as shopper:
                for number in range(2):
                    await shopper.search(f"kindle {number}")
                assert_rate_limited(await shopper.http.get("/api/search", params={"q": "kindle"}))
                proxy.hang()
                before = proxy.sent.count(counted)
                # The store does not answer: the first attempt waits for it, then is admitted.
                for number in range(4):
                    admitted = await shopper.http.get("/api/search", params={"q": f"k {number}"})
                    assert admitted.status_code == 200, admitted.text
                asked = proxy.sent.count(counted) - before
                assert 1 <= asked <= 2, asked  # one attempt's test (and hit), then none

                proxy.restore()

                async def limited_again() -> bool:
                    response = await shopper.http.get("/api/search", params={"q": "kindle"})
                    return response.status_code == 429

                await wait_until(limited_again, timeout=30)
