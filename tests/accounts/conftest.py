"""A deployment of its own for each test of an account's data (they change its catalog and
erase what they made): the sample catalog, shops' tokens (HS256 with SHOP_SECRET) and the
admin API on; on the Redis broker with PERCOLERT_TEST_BROKER=redis."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
import pytest

from percolert.core.settings import Settings
from tests.accounts.tokens import SHOP_SECRET
from tests.conftest import SAMPLE_CATALOG, prepare_indices
from tests.servers import run_server

ADMIN_TOKEN = "admin-token-for-the-account-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass(frozen=True)
class Shop:
    settings: Settings
    url: str


@pytest.fixture
def shop(fresh_settings: Settings, request: pytest.FixtureRequest) -> Iterator[Shop]:
    """A running server; `request.param` (indirect parametrisation) changes its settings."""
    changes = getattr(request, "param", {})
    settings = msgspec.structs.replace(
        fresh_settings, jwt_secret=SHOP_SECRET, admin_token=ADMIN_TOKEN, **changes
    )
    prepare_indices(settings, catalog=SAMPLE_CATALOG)
    with run_server(settings) as url:
        yield Shop(settings, url)
