"""The example shop beside the demo (`percolert up --shop`): `examples/shop/shop.py` of the
source checkout, run as a process of its own on its own origin, and the settings that let
Percolert take its customers' tokens (its JWKS, its audience, its origin)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec

from percolert.core import assets
from percolert.core.settings import Settings

# The audience the example shop's tokens name (examples/shop/shop.py).
AUDIENCE = "percolert"
STOP_SECONDS = 10.0


class ShopUnavailable(Exception):
    """The example shop cannot run here (not a source checkout)."""


def shop_script() -> Path:
    root = assets.source_root()
    script = None if root is None else root / "examples" / "shop" / "shop.py"
    if script is None or not script.is_file():
        raise ShopUnavailable("--shop needs a source checkout (examples/shop/shop.py)")
    return script


def shop_url(settings: Settings, port: int) -> str:
    return f"http://{settings.host}:{port}"


def with_shop(settings: Settings, port: int) -> Settings:
    """Percolert's settings for taking the example shop's tokens: its JWKS (plain http, on
    this machine: development only), its audience, its page's origin."""
    url = shop_url(settings, port)
    return msgspec.structs.replace(
        settings,
        jwks_url=f"{url}/.well-known/jwks.json",
        jwks_allow_http=True,
        jwt_secret=None,
        jwt_audience=AUDIENCE,
        allowed_origins=(*settings.allowed_origins, url),
    )


@contextlib.contextmanager
def running_shop(settings: Settings, port: int) -> Iterator[str]:
    """The example shop running until the block ends; yields its URL."""
    percolert = f"http://{settings.host}:{settings.port}"
    process = subprocess.Popen(
        [
            sys.executable,
            str(shop_script()),
            "--host",
            settings.host,
            "--port",
            str(port),
            "--percolert",
            percolert,
        ],
        # Its own process group: Ctrl-C reaches the demo, which stops the shop once.
        start_new_session=True,
    )
    try:
        yield shop_url(settings, port)
    finally:
        process.terminate()
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
