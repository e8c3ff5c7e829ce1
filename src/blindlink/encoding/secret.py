"""The linkage secret shared by the two parties (and never with the server)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from blindlink.errors import InputError

MIN_SECRET_BYTES = 16


def read_secret(path: Path) -> bytes:
    """Read a secret file; surrounding whitespace (a trailing newline) is not part of it."""
    try:
        secret = Path(path).read_bytes().strip()
    except FileNotFoundError:
        raise InputError(str(path), "secret file not found") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise InputError(
            str(path),
            f"secret is too short: at least {MIN_SECRET_BYTES} bytes "
            "are needed (make one with `blindlink secret new`)",
        )
    return secret


def write_new_secret(path: Path) -> None:
    """Write a fresh 256-bit secret, hex encoded, readable only by its owner."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
