"""Where a webhook may point: the shop's endpoint on the public internet, never this host, its
private network or a cloud metadata service (server-side request forgery).

A URL is checked when it is configured (`check_url`) and again before every delivery; the
addresses its host resolves to are checked at every connection, by the resolver the sender's
connector uses (`GuardedResolver`), which hands the connector exactly the addresses it
checked: no second lookup that a rebinding DNS server could answer differently.
`allow_private` lifts the guard for development and for shops that run their endpoint on
the same private network (loopback included); unspecified and multicast addresses are
never a target.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

# A host name as yarl leaves it (lower case, international names IDNA-encoded).
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
# NAT64 (RFC 6052) carries an IPv4 address in its last 32 bits: the well-known prefix is
# public, what it reaches is the embedded address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Deprecated IPv4-compatible IPv6 (RFC 4291); `ipaddress` calls most of it global.
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# As `ThreadedResolver` asks and answers (the results are numeric: no second lookup).
_ADDRESS_CONFIGURED = socket.AI_ADDRCONFIG & getattr(socket, "AI_MASK", socket.AI_ADDRCONFIG)
_NUMERIC_FLAGS = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


class TargetRefused(ValueError):
    """A webhook URL or the address its host resolves to is not a permitted target."""


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse (TargetRefused) a URL a webhook may not point to. The message names the host
    at most, never the rest of the URL (its path or query may carry a token)."""
    try:
        parsed = URL(url)
    except ValueError:
        raise TargetRefused("not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise TargetRefused("the scheme must be http or https")
    # yarl drops an empty userinfo ("http://@host/") and an empty fragment: look at the text.
    if parsed.user is not None or parsed.password is not None or "@" in urlsplit(url).netloc:
        raise TargetRefused("the URL must not carry a user name or password")
    if "#" in url:
        raise TargetRefused("the URL must not have a fragment")
    host = parsed.host
    if not host:
        raise TargetRefused("the URL has no host")
    address = _ip_address(host)
    if address is not None:
        if not address_allowed(host, allow_private=allow_private):
            raise TargetRefused(f"{host} is not a public address")
        return
    if not _HOST_NAME.fullmatch(host):
        raise TargetRefused(f"{host!r} is not a host name")
    if _numeric_ipv4(host):
        # "127.1", "0x7f000001": the resolver reads these as addresses; nobody means them.
        raise TargetRefused(f"{host} is an address in a legacy numeric form")
    if not allow_private and _is_local_name(host):
        raise TargetRefused(f"{host} names this host")


def address_allowed(address: str, *, allow_private: bool) -> bool:
    """Whether a connection to `address` is allowed: only globally routable unicast unless
    `allow_private`, and then anything but unspecified and multicast."""
    parsed = _ip_address(address)
    if parsed is None:
        return False
    if isinstance(parsed, ipaddress.IPv6Address):
        # What these reach is their embedded IPv4 address.
        embedded = parsed.ipv4_mapped or parsed.sixtofour
        if embedded is None and parsed in _NAT64:
            embedded = ipaddress.IPv4Address(int(parsed) & 0xFFFFFFFF)
        if embedded is not None:
            return address_allowed(str(embedded), allow_private=allow_private)
        if parsed in _IPV4_COMPATIBLE and not allow_private:
            return False  # also covers :: and ::1
    if parsed.is_unspecified or parsed.is_multicast:
        return False
    if allow_private:
        return True
    refused = (
        parsed.is_private
        or parsed.is_loopback
        or parsed.is_link_local
        or parsed.is_reserved
        or (isinstance(parsed, ipaddress.IPv6Address) and parsed.is_site_local)
    )
    # `is_global` adds the ranges the flags above miss (100.64/10, shared address space).
    return parsed.is_global and not refused


async def resolve_allowed(host: str, port: int, *, allow_private: bool) -> list[str]:
    """The addresses `host` resolves to, all of them allowed: a name with one refused
    address is refused as a whole (TargetRefused), as is a name that resolves to nothing.
    A name that does not resolve raises the resolver's error (socket.gaierror)."""
    return [result["host"] for result in await _resolve(host, port, 0, allow_private)]


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver for webhook connections: resolves through `resolve_allowed` and
    gives the connector exactly the addresses checked. Refusal raises TargetRefused, which
    aiohttp lets through unwrapped (it wraps only OSError)."""

    def __init__(self, *, allow_private: bool) -> None:
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return await _resolve(host, port, family, self._allow_private)

    async def close(self) -> None:
        pass


async def _resolve(host: str, port: int, family: int, allow_private: bool) -> list[ResolveResult]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, family=family, flags=_ADDRESS_CONFIGURED
    )
    results: list[ResolveResult] = []
    for info_family, _, proto, _, address in infos:
        if info_family == socket.AF_INET6:
            if len(address) < 3:
                continue  # IPv6 without its fields: this Python cannot use it
            if address[3]:
                # A scoped (link-local) address: its name carries the scope, "fe80::1%eth0".
                resolved, resolved_port = await loop.getnameinfo(
                    (address[0], address[1], address[2], address[3]),
                    socket.NI_NUMERICHOST | socket.NI_NUMERICSERV,
                )
                address = (resolved, int(resolved_port))
        elif info_family != socket.AF_INET:
            continue
        ip, ip_port = str(address[0]), int(address[1])
        if not address_allowed(ip, allow_private=allow_private):
            raise TargetRefused(f"{host} resolves to {ip}, which is not a public address")
        results.append(
            ResolveResult(
                hostname=host,
                host=ip,
                port=ip_port,
                family=info_family,
                proto=proto,
                flags=_NUMERIC_FLAGS,
            )
        )
    if not results:
        raise TargetRefused(f"{host} resolves to no address")
    return results


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def _numeric_ipv4(host: str) -> bool:
    try:
        socket.inet_aton(host.rstrip("."))
    except OSError:
        return False
    return True


def _is_local_name(host: str) -> bool:
    name = host.rstrip(".")
    return name == "localhost" or name.endswith(".localhost")
