"""Reading the environment into Settings: values, defaults and clear refusals."""

from __future__ import annotations

import pytest

from percolert import es
from percolert.settings import SettingsError, from_environment

BASE = {"ELASTICSEARCH_URL": "http://127.0.0.1:9200"}


@pytest.mark.parametrize(("raw", "enabled"), [("off", False), ("0", False), ("on", True)])
def test_alerts_switch(raw: str, enabled: bool) -> None:
    assert from_environment({**BASE, "PERCOLERT_ALERTS": raw}).alerts_enabled is enabled


def test_alerts_are_on_by_default() -> None:
    assert from_environment(BASE).alerts_enabled is True


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("PERCOLERT_ALERTS", "maybe", "PERCOLERT_ALERTS must be true or false"),
        ("PERCOLERT_COALESCE_SECONDS", "-1", "must be at least 0"),
        ("PERCOLERT_SOCKET_QUEUE_SIZE", "many", "must be a number"),
        ("PERCOLERT_INDEX_PREFIX", "Shop!", "lowercase letters"),
        ("ELASTICSEARCH_CONNECTIONS", "0", "must be at least 1"),
    ],
)
def test_bad_values_are_refused_by_name(name: str, raw: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        from_environment({**BASE, name: raw})


def test_the_client_keeps_as_many_connections_as_configured() -> None:
    settings = from_environment({**BASE, "ELASTICSEARCH_CONNECTIONS": "7"})
    assert settings.elasticsearch_connections == 7
    client = es.create_client(settings)
    assert client.transport.node_pool.get().config.connections_per_node == 7
    assert from_environment(BASE).elasticsearch_connections == 32
