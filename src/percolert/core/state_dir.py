"""The state directory's secrets: made once at random, kept readable by their owner only
(development: the session secret, the demo's admin token)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def kept_secret(state_dir: Path, name: str) -> str:
    """A random secret made once and kept in the state directory as `name`, readable by
    its owner only (development: the session secret, the demo's admin token)."""
    path = state_dir / name
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as secret_file:
            secret_file.write(secrets.token_urlsafe(32))
    return path.read_text().strip()
