"""Where a webhook may point: the address table, URL checks, and resolution that refuses a
name as a whole when any of its addresses is refused."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest

from percolert.offsite.targets import (
    GuardedResolver,
    TargetRefused,
    address_allowed,
    check_url,
    resolve_allowed,
)
from tests.offsite.receivers import WebhookReceiver

REFUSED = [
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "127.0.0.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # shared address space
    "::1",
    "fe80::1",
    "fc00::1",
    "::ffff:10.0.0.1",
    "::ffff:127.0.0.1",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "fec0::1",  # site-local
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "ff02::1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",  # documentation
    "not an address",
]
ALLOWED = [
    "93.184.216.34",
    "2606:2800:220:1::1",
    "::ffff:93.184.216.34",
    "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34
]


@pytest.mark.parametrize("address", REFUSED)
def test_refused_addresses(address: str) -> None:
    assert not address_allowed(address, allow_private=False)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_allowed(address: str) -> None:
    assert address_allowed(address, allow_private=False)
    assert address_allowed(address, allow_private=True)


@pytest.mark.parametrize(
    "address", ["10.0.0.1", "127.0.0.1", "::1", "fe80::1", "169.254.169.254", "::ffff:10.0.0.1"]
)
def test_private_addresses_allowed_when_private_is(address: str) -> None:
    assert address_allowed(address, allow_private=True)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "::ffff:0.0.0.0"])
def test_unspecified_and_multicast_never_allowed(address: str) -> None:
    assert not address_allowed(address, allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://shop.example/hooks",
        "file:///etc/passwd",
        "http://user:pass@shop.example/hooks",
        "http://user@shop.example/hooks",
        "http://@shop.example/hooks",
        "https://shop.example/hooks#part",
        "https://shop.example/hooks#",
        "http:///hooks",
        "shop.example/hooks",
        "http://[::1]/",
        "http://[::1]:8080/hooks",
        "http://127.0.0.1:8080/hooks",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/",
        "http://127.1/",
        "http://0x7f000001/",
        "http://localhost/",
        "http://LOCALHOST./",
        "http://shop.localhost/",
    ],
)
def test_urls_refused(url: str) -> None:
    with pytest.raises(TargetRefused):
        check_url(url, allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "https://shop.example/hooks",
        "http://shop.example:8080/hooks?token=abc",
        "https://93.184.216.34/hooks",
        "https://[2606:2800:220:1::1]/hooks",
    ],
)
def test_public_urls_accepted(url: str) -> None:
    check_url(url, allow_private=False)


@pytest.mark.parametrize(
    "url", ["http://localhost:8080/", "http://127.0.0.1/", "http://[::1]/", "http://10.1.2.3/"]
)
def test_private_urls_accepted_when_private_is(url: str) -> None:
    check_url(url, allow_private=True)


def test_refusal_names_no_userinfo() -> None:
    with pytest.raises(TargetRefused) as refused:
        check_url("https://shop:s3cret@shop.example/", allow_private=False)
    assert "s3cret" not in str(refused.value)


def _fake_getaddrinfo(monkeypatch: pytest.MonkeyPatch, addresses: list[str]) -> None:
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
            if ":" in address
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
            for address in addresses
        ]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


@pytest.mark.anyio
async def test_a_name_with_one_private_address_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_getaddrinfo(monkeypatch, ["93.184.216.34", "10.0.0.1"])
    with pytest.raises(TargetRefused, match=r"resolves to 10\.0\.0\.1"):
        await resolve_allowed("shop.example", 443, allow_private=False)
    assert await resolve_allowed("shop.example", 443, allow_private=True) == [
        "93.184.216.34",
        "10.0.0.1",
    ]


@pytest.mark.anyio
async def test_a_name_with_no_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_getaddrinfo(monkeypatch, [])
    with pytest.raises(TargetRefused, match="no address"):
        await resolve_allowed("shop.example", 443, allow_private=True)


@pytest.mark.anyio
async def test_the_resolver_gives_the_connector_what_it_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_getaddrinfo(monkeypatch, ["93.184.216.34", "2606:2800:220:1::1"])
    results = await GuardedResolver(allow_private=False).resolve("shop.example", 443)
    assert [(result["host"], result["port"], result["family"]) for result in results] == [
        ("93.184.216.34", 443, socket.AF_INET),
        ("2606:2800:220:1::1", 443, socket.AF_INET6),
    ]
    assert all(result["hostname"] == "shop.example" for result in results)
    assert all(result["flags"] & socket.AI_NUMERICHOST for result in results)


@pytest.mark.anyio
async def test_localhost_resolves_to_a_refused_address() -> None:
    with pytest.raises(TargetRefused, match="localhost resolves to"):
        await resolve_allowed("localhost", 80, allow_private=False)
    assert await resolve_allowed("localhost", 80, allow_private=True)


@pytest.mark.anyio
async def test_aiohttp_lets_a_refusal_through_and_sends_nothing() -> None:
    """The sender relies on the resolver's TargetRefused coming out of aiohttp as it is."""
    with WebhookReceiver() as receiver:
        url = receiver.url.replace("127.0.0.1", "localhost")
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(allow_private=False))
        async with aiohttp.ClientSession(connector=connector) as session:
            with pytest.raises(TargetRefused, match="not a public address"):
                await session.post(url, data=b"{}")
        assert receiver.requests == []
