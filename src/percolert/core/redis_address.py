"""Where the shared Redis is, read from `PERCOLERT_REDIS_URL`: one server, a Redis Cluster, or
a primary found through Sentinel. The URL forms are Centrifugo's (v5+), which operators of a
real-time tier already know:

    redis://[user:password@]host:port[/db]        one server (also rediss://, unix://path)
    redis+cluster://[user:password@]host:port[?addr=host:port&addr=...]
    redis+sentinel://[user:password@]host:port[/db]?sentinel_master_name=NAME
        [&addr=host:port...][&sentinel_user=...&sentinel_password=...]

`rediss+cluster://` and `rediss+sentinel://` speak TLS (to the sentinels too). The host in
the URL and each `addr` are seed nodes (Cluster) or sentinels; the user and password are the
data nodes' (the primary's), `sentinel_user` and `sentinel_password` the sentinels'."""

from __future__ import annotations

from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec

Mode = Literal["standalone", "cluster", "sentinel"]

_SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "unix": ("standalone", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
_QUERY = {
    "cluster": {"addr"},
    "sentinel": {"addr", "sentinel_master_name", "sentinel_user", "sentinel_password"},
}


class RedisAddress(msgspec.Struct, frozen=True):
    mode: Mode
    url: str  # as given; for one server, what redis-py's from_url takes
    nodes: tuple[tuple[str, int], ...] = ()  # Cluster seeds, or sentinels
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0
    master: str | None = None  # Sentinel's name of the primary
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def _node(text: str, url: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    digits = port.isascii() and port.isdigit()
    if not colon or not host or "," in host or not digits or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} in {url!r} is not host:port (more nodes go in &addr=host:port)")
    return unquote(host.strip("[]")), int(port)


def parse_redis_url(url: str) -> RedisAddress:
    """The address `url` names; ValueError saying what is wrong with it."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme not in _SCHEMES:
        raise ValueError(
            "must start with redis://, rediss://, unix://, redis+cluster://, "
            f"rediss+cluster://, redis+sentinel:// or rediss+sentinel://, got {url!r}"
        )
    mode, tls = _SCHEMES[scheme]
    if mode == "standalone":
        return RedisAddress(mode=mode, url=url, tls=tls)
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - _QUERY[mode])
    if unknown:
        raise ValueError(f"{url!r}: unknown option {unknown[0]!r} for {scheme}://")
    seeds = [parts.netloc.rpartition("@")[2], *query.get("addr", [])]
    db_text = parts.path.removeprefix("/") or "0"
    if not (db_text.isascii() and db_text.isdigit()):
        raise ValueError(f"{url!r}: the path is a database number, got {parts.path!r}")
    if mode == "cluster" and int(db_text) != 0:
        raise ValueError(f"{url!r}: a Redis Cluster has only database 0")

    def one(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    master = one("sentinel_master_name")
    if mode == "sentinel" and not master:
        raise ValueError(f"{url!r} names no primary: add ?sentinel_master_name=NAME")
    return RedisAddress(
        mode=mode,
        url=url,
        nodes=tuple(_node(seed, url) for seed in seeds),
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        db=int(db_text),
        master=master,
        sentinel_username=one("sentinel_user"),
        sentinel_password=one("sentinel_password"),
    )
