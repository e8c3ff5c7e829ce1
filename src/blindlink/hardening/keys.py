"""Keys and keyed pseudo-random choices derived from the linkage secret.

Both parties derive the same values from the secret they share; the server, which never holds
the secret, cannot. Every derivation is HMAC-SHA256 under a label naming its purpose, so keys
for different steps, positions and salt values are independent.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np

_DOMAIN = b"blindlink/hardening/v1"
_BLOCK = hashlib.sha256().digest_size


def derive_key(secret: bytes, *labels: str) -> bytes:
    """A 256-bit key for the purpose named by `labels` (each length-prefixed, so no two label
    lists give the same input)."""
    message = _DOMAIN + b"".join(
        len(encoded).to_bytes(4, "big") + encoded for encoded in (s.encode() for s in labels)
    )
    return hmac.new(secret, message, hashlib.sha256).digest()


def keystream(key: bytes, size: int) -> bytes:
    """`size` pseudo-random bytes: HMAC-SHA256 of a block counter (HKDF-Expand without its
    255-block cap)."""
    blocks = (size + _BLOCK - 1) // _BLOCK
    stream = b"".join(
        hmac.new(key, counter.to_bytes(8, "big"), hashlib.sha256).digest()
        for counter in range(blocks)
    )
    return stream[:size]


def keyed_words(key: bytes, count: int) -> np.ndarray:
    """`count` pseudo-random uint32 words."""
    return np.frombuffer(keystream(key, 4 * count), dtype=">u4").astype(np.int64)


def keyed_permutation(key: bytes, size: int) -> np.ndarray:
    """A permutation of range(size): positions sorted by keyed 64-bit values."""
    values = np.frombuffer(keystream(key, 8 * size), dtype=">u8")
    return np.argsort(values, kind="stable")


def keyed_taps(key: bytes, outputs: int, inputs: int, taps: int) -> np.ndarray:
    """An (outputs, taps) array: for each output, `taps` distinct input positions.

    Positions are keyed words modulo `inputs` (bias below inputs / 2**32, and none when
    `inputs` is a power of two); rows that drew a position twice are drawn again from a
    key for the next attempt.
    """
    if taps > inputs:
        raise ValueError(f"cannot choose {taps} distinct positions out of {inputs}")
    chosen = np.empty((outputs, taps), dtype=np.int64)
    pending = np.arange(outputs)
    attempt = 0
    while pending.size:
        words = keyed_words(derive_key(key, "taps", str(attempt)), pending.size * taps)
        draw = (words % inputs).reshape(pending.size, taps)
        ordered = np.sort(draw, axis=1)
        distinct = (np.diff(ordered, axis=1) != 0).all(axis=1)
        chosen[pending[distinct]] = draw[distinct]
        pending = pending[~distinct]
        attempt += 1
    return chosen
