"""PERCOLERT_REDIS_URL's forms: one server, a Redis Cluster, Sentinel's primary."""

from __future__ import annotations

import pytest

from percolert.core.redis_address import RedisAddress, parse_redis_url


def test_one_server_is_passed_on_as_given() -> None:
    for url in ("redis://cache:6379/2", "rediss://:secret@cache:6380", "unix:///run/redis.sock"):
        address = parse_redis_url(url)
        assert (address.mode, address.url) == ("standalone", url)
    assert parse_redis_url("rediss://cache:6380").tls


def test_a_cluster_names_its_seed_nodes_and_credentials() -> None:
    address = parse_redis_url(
        "rediss+cluster://app:p%40ss@10.0.0.1:7000?addr=10.0.0.2:7000&addr=[::1]:7001"
    )
    assert address == RedisAddress(
        mode="cluster",
        url=address.url,
        nodes=(("10.0.0.1", 7000), ("10.0.0.2", 7000), ("::1", 7001)),
        tls=True,
        username="app",
        password="p@ss",  # percent-decoded
    )


def test_sentinel_names_the_primary_and_its_own_credentials() -> None:
    address = parse_redis_url(
        "redis+sentinel://:data@s1:26379/3?addr=s2:26379&sentinel_master_name=orders"
        "&sentinel_password=watch"
    )
    assert address.mode == "sentinel"
    assert address.nodes == (("s1", 26379), ("s2", 26379))
    assert (address.master, address.db) == ("orders", 3)
    assert (address.username, address.password) == (None, "data")
    assert address.sentinel_password == "watch"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("cache:6379", "must start with redis://"),
        ("memcached://cache:11211", "must start with redis://"),
        ("redis+cluster://c1:7000/2", "only database 0"),
        ("redis+cluster://c1?addr=c2:7000", "is not host:port"),
        ("redis+cluster://c1:7000?addr=c2", "is not host:port"),
        ("redis+cluster://c1:7000?sentinel_master_name=x", "unknown option 'sentinel_master_name'"),
        ("redis+sentinel://s1:26379", "names no primary"),
        ("redis+sentinel://s1:26379/zero?sentinel_master_name=m", "database number"),
        ("redis+sentinel://s1:26379/3/?sentinel_master_name=m", "database number"),
        ("redis+cluster://c1:7000,c2:7000", "more nodes go in &addr="),
        ("redis+cluster://c1:7000?addr=c2:\u0663", "is not host:port"),
    ],
)
def test_a_bad_url_says_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_redis_url(url)
