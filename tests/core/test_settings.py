"""Reading the environment into Settings: values, defaults and clear refusals."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from percolert.core import settings as settings_module
from percolert.core.settings import (
    DEFAULT_ELASTICSEARCH_URL,
    Settings,
    SettingsError,
    from_environment,
)
from percolert.engine import es

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
        ("PERCOLERT_LIMIT_SEARCHES_PER_SESSION", "lots", "takes limits like 10/second"),
        ("PERCOLERT_RATE_LIMIT_STORAGE", "redis://cache:6379", "must be an async storage URI"),
        ("PERCOLERT_TRUSTED_PROXIES", "10.0.0.1,proxy.local", "addresses or networks"),
        ("PERCOLERT_MAX_SOCKETS_PER_USER", "0", "must be at least 1"),
        ("PERCOLERT_RATE_LIMITS", "sometimes", "must be true or false"),
        ("PERCOLERT_REDIS_URL", "cache:6379", "must start with redis://"),
        ("PERCOLERT_REDIS_URL", "redis+sentinel://s1:26379", "names no primary"),
        ("PERCOLERT_LEASE_SLACK_SECONDS", "0", "must be at least 0.1"),
        ("PERCOLERT_BROAD_WATCH_SHARE", "0", "must be at least 0.01"),
        ("PERCOLERT_BROAD_WATCH_MIN_SEARCHES", "0", "must be at least 1"),
    ],
)
def test_bad_values_are_refused_by_name(name: str, raw: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        from_environment({**BASE, name: raw})


def test_the_broad_watch_bound_comes_from_the_environment() -> None:
    default = from_environment(BASE)
    assert (default.broad_watch_share, default.broad_watch_min_searches) == (0.2, 200)
    raw = {
        **BASE,
        "PERCOLERT_BROAD_WATCH_SHARE": "0.5",
        "PERCOLERT_BROAD_WATCH_MIN_SEARCHES": "50",
        "PERCOLERT_BROAD_WATCH_PERIOD_SECONDS": "60",
    }
    configured = from_environment(raw)
    assert (
        configured.broad_watch_share,
        configured.broad_watch_min_searches,
        configured.broad_watch_period_seconds,
    ) == (0.5, 50, 60)


def test_the_lease_slack_comes_from_the_environment() -> None:
    assert from_environment(BASE).lease_slack_seconds == 600
    raw = {**BASE, "PERCOLERT_LEASE_SLACK_SECONDS": "90"}
    assert from_environment(raw).lease_slack_seconds == 90


def test_the_client_keeps_as_many_connections_as_configured() -> None:
    settings = from_environment({**BASE, "ELASTICSEARCH_CONNECTIONS": "7"})
    assert settings.elasticsearch_connections == 7
    client = es.create_client(settings)
    assert client.transport.node_pool.get().config.connections_per_node == 7
    assert from_environment(BASE).elasticsearch_connections == 32


def test_the_cluster_url_comes_from_the_environment_or_the_given_default() -> None:
    assert from_environment({}).elasticsearch_url == DEFAULT_ELASTICSEARCH_URL
    given = from_environment({}, default_elasticsearch_url="http://127.0.0.1:9333")
    assert given.elasticsearch_url == "http://127.0.0.1:9333"
    explicit = from_environment(BASE, default_elasticsearch_url="http://127.0.0.1:9333")
    assert explicit.elasticsearch_url == BASE["ELASTICSEARCH_URL"]


def test_every_variable_is_read_here() -> None:
    settings = from_environment(
        {
            **BASE,
            "PERCOLERT_LOG_FORMAT": "text",
            "PERCOLERT_ESNODE_DIR": "/opt/esnode",
            "JAVA_HOME": "/opt/jdk",
            "PERCOLERT_REDIS_SERVER": "/opt/redis/bin/redis-server",
            "ELASTICSEARCH_TIMEOUT": "2",
            "PERCOLERT_REDIS_URL": "redis://cache:6379/2",
            "PERCOLERT_INSTANCE_ID": "web-1",
        }
    )
    assert (settings.redis_url, settings.instance_id) == ("redis://cache:6379/2", "web-1")
    # Unset: one process, everything in memory.
    assert (from_environment(BASE).redis_url, from_environment(BASE).instance_id) == (None, None)
    assert settings.log_format == "text"
    assert settings.esnode_dir == Path("/opt/esnode")
    assert settings.java_home == Path("/opt/jdk")
    assert settings.redis_server == Path("/opt/redis/bin/redis-server")
    assert from_environment(BASE).redis_server is None  # redis-server on the PATH
    assert settings.percolate_seconds == 6.0  # three Elasticsearch timeouts, unless set
    assert from_environment({**BASE, "PERCOLERT_PERCOLATE_TIMEOUT": "1.5"}).percolate_seconds == 1.5
    with pytest.raises(SettingsError, match="PERCOLERT_LOG_FORMAT must be one of json, text"):
        from_environment({**BASE, "PERCOLERT_LOG_FORMAT": "xml"})


def test_delivery_through_centrifugo_needs_its_api_and_one_instance() -> None:
    centrifugo = {
        **BASE,
        "PERCOLERT_DELIVERY": "centrifugo",
        "PERCOLERT_CENTRIFUGO_API_URL": "http://centrifugo:8000",
        "PERCOLERT_CENTRIFUGO_API_KEY": "key",
        "PERCOLERT_CENTRIFUGO_TOKEN_SECRET": "s" * 32,
        "PERCOLERT_CENTRIFUGO_TOKEN_SECONDS": "600",
    }
    settings = from_environment(centrifugo)
    assert (settings.delivery, settings.centrifugo_api_url) == (
        "centrifugo",
        "http://centrifugo:8000",
    )
    assert (settings.centrifugo_token_secret, settings.centrifugo_token_seconds) == ("s" * 32, 600)
    assert from_environment(BASE).delivery == "hub"
    refusals = [
        ({"PERCOLERT_DELIVERY": "pigeons"}, "PERCOLERT_DELIVERY must be one of hub, centrifugo"),
        ({"PERCOLERT_CENTRIFUGO_API_KEY": ""}, "needs PERCOLERT_CENTRIFUGO_API_URL"),
        ({"PERCOLERT_CENTRIFUGO_API_URL": "centrifugo:8000"}, "must start with http://"),
        ({"PERCOLERT_REDIS_URL": "redis://r:6379"}, "runs one instance"),
        ({"PERCOLERT_CENTRIFUGO_TOKEN_SECRET": "short"}, "at least 32 characters"),
    ]
    for changes, message in refusals:
        with pytest.raises(SettingsError, match=message):
            from_environment({**centrifugo, **changes})


def test_settings_import_no_dev_tooling() -> None:
    """Settings are the lowest layer: building them never looks for a dev node."""
    code = (
        "import sys, percolert.core.settings; "
        "print('percolert.dev.devnode' in sys.modules or 'percolert.dev.redisnode' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


def test_rate_limits_read_in_limits_notation_or_off() -> None:
    defaults = from_environment(BASE)
    assert defaults.rate_limits_enabled is True
    assert defaults.limit_searches_per_session == "10/second;300/minute"
    assert defaults.rate_limit_storage is None  # memory, or the shared Redis
    assert defaults.max_sockets_per_user == 20
    assert defaults.trusted_proxies == ()
    settings = from_environment(
        {
            **BASE,
            "PERCOLERT_LIMIT_SEARCHES_PER_SESSION": "5 per second; 100/hour",
            "PERCOLERT_LIMIT_SOCKETS_PER_ADDRESS": "off",
            "PERCOLERT_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.7",
            "PERCOLERT_MAX_SOCKETS_PER_USER": "4",
        }
    )
    assert settings.limit_searches_per_session == "5 per second; 100/hour"
    assert settings.limit_sockets_per_address is None
    assert settings.trusted_proxies == ("10.0.0.0/8", "192.0.2.7")
    assert settings.max_sockets_per_user == 4
    assert from_environment({**BASE, "PERCOLERT_RATE_LIMITS": "off"}).rate_limits_enabled is False


def test_every_default_is_written_once() -> None:
    """The environment's defaults are the struct's: no parse of a variable carries a literal
    default of its own, and a derived default follows what it derives from however the
    settings were made."""
    tree = ast.parse(inspect.getsource(settings_module.from_environment))
    default_at = {"_number": 2, "_flag": 2, "_duration": 2, "_choice": 3}
    literal_defaults = [
        ast.unparse(call)
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Name)
        and call.func.id in default_at
        and not ast.unparse(call.args[default_at[call.func.id]]).startswith("default.")
    ]
    assert literal_defaults == []
    for field in msgspec.structs.fields(Settings):
        assert getattr(from_environment({}), field.name) == getattr(Settings(), field.name), field
    made = Settings(elasticsearch_timeout=2.0)
    read = from_environment({"ELASTICSEARCH_TIMEOUT": "2"})
    assert made.percolate_seconds == read.percolate_seconds == 6.0
