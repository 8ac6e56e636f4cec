"""The shop's public keys, read from its JWKS URL and kept: a token names its key by `kid`.

The set is read at the first need, again every `jwks_refresh_seconds` (a background loop),
and at once when a token names a key the set lacks (the shop rotated its keys), though at
most `jwks_reads_per_minute` times a minute for such keys (as Auth0's jwks-rsa does): tokens
with made-up `kid`s must not turn into a flood of requests to the shop, and a shop that
rotates and signs with the new key at once must not wait for an interval to pass. A read
that fails keeps the keys read last: a JWKS outage must not log every customer out. PyJWT
parses the keys (`PyJWK`); the fetch is aiohttp's (the Elasticsearch client's own
transport), without redirects: an https URL must not be led to a plain-http one.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import aiohttp
import anyio
import jwt
import msgspec

from percolert.core.settings import Settings

logger = logging.getLogger(__name__)

# The public-key algorithms a shop's JWKS may use.
SIGNING_ALGORITHMS = ("RS256", "ES256")
# A JWKS holds a few keys: a few KB. Anything much larger is not one.
_MAX_BYTES = 256 * 1024
_TIMEOUT_SECONDS = 5.0


class JwksUnavailable(Exception):
    """No key set could be read yet (the shop's JWKS URL fails and none was read before)."""


class JwksKeys:
    def __init__(self, settings: Settings) -> None:
        assert settings.jwks_url is not None
        self._url = settings.jwks_url
        self._refresh_seconds = settings.jwks_refresh_seconds
        self._reads_per_minute = settings.jwks_reads_per_minute
        self._keys: dict[str, jwt.PyJWK] = {}
        self._read_once = False
        # When the set was read for unknown keys in the last minute (monotonic seconds).
        self._unknown_reads: deque[float] = deque()
        self._lock = anyio.Lock()
        self._session: aiohttp.ClientSession | None = None
        # Reads that failed (for metrics and tests).
        self.failures = 0

    async def key(self, kid: str) -> jwt.PyJWK | None:
        """The key named `kid`, reading the set again if it lacks it; None if the shop has no
        such key. JwksUnavailable if no set was ever read, or if the set may not be read
        again so soon."""
        found = self._keys.get(kid)
        if found is not None:
            return found
        # One read at a time: tokens arriving together with a new `kid` wait for one read.
        async with self._lock:
            found = self._keys.get(kid)  # another token's read may have brought it
            if found is not None:
                return found
            if not self._may_read_for_unknown():
                # Not "no such key": the shop may have just rotated (a retry will tell).
                raise JwksUnavailable(
                    f"{self._reads_per_minute} reads of the shop's keys for unknown keys in "
                    "the last minute"
                )
            await self._refresh()
        if not self._read_once:
            raise JwksUnavailable(f"the shop's keys could not be read from {self._url}")
        return self._keys.get(kid)

    def _may_read_for_unknown(self) -> bool:
        now = time.monotonic()
        while self._unknown_reads and self._unknown_reads[0] <= now - 60:
            self._unknown_reads.popleft()
        if len(self._unknown_reads) >= self._reads_per_minute:
            return False
        self._unknown_reads.append(now)
        return True

    async def run(self) -> None:
        """Read the set again every `jwks_refresh_seconds`."""
        while True:
            async with self._lock:
                await self._refresh()
            await anyio.sleep(self._refresh_seconds)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _refresh(self) -> None:
        """Read the set (the caller holds the lock); a failure keeps the keys read before."""
        try:
            keys = await self._read()
        except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWTError) as error:
            self.failures += 1
            logger.warning(
                "reading the shop's keys from %s failed (%s): keeping the %d read before",
                self._url,
                error,
                len(self._keys),
            )
            return
        self._keys = keys
        self._read_once = True

    async def _read(self) -> dict[str, jwt.PyJWK]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=_TIMEOUT_SECONDS)
            )
        async with self._session.get(self._url, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            # To the end, in whatever chunks it comes, but no further than the bound.
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > _MAX_BYTES:
                    raise ValueError(f"larger than {_MAX_BYTES} bytes")
        try:
            document = msgspec.json.decode(body, type=dict[str, Any])
        except msgspec.DecodeError as error:
            raise ValueError(f"not JSON: {error}") from None
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document.get("keys", []) if isinstance(document.get("keys"), list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                continue  # a key without `kid` cannot be chosen by a token
            if entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(entry)
            except Exception as error:  # PyJWT raises TypeError and others besides its own
                # A key PyJWT cannot use (malformed, or of another kind): the others count.
                logger.warning("skipping the shop's key %r: %s", entry["kid"], error)
                continue
            if key.algorithm_name not in SIGNING_ALGORITHMS:
                # A shared secret ("oct") published in a JWKS is no secret.
                logger.warning(
                    "skipping the shop's key %r: %s is not one of %s",
                    entry["kid"],
                    key.algorithm_name,
                    ", ".join(SIGNING_ALGORITHMS),
                )
                continue
            keys[entry["kid"]] = key
        if not keys:
            raise ValueError("no usable signing key with a kid")
        return keys
