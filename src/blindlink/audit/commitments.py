"""Keyed hashes that audit entries commit to: a run's decided pairs, and the rows of a release.

They are HMAC-SHA256 under a key derived from the server's signing key, so that whoever reads
an audit export (an auditor, a party) cannot test guesses of which records matched against them:
a small match set would otherwise be found by trying every candidate pair. `admin verify`, on
the server's data directory, recomputes them from the database exactly as the server computed
them; both are over big-endian 64-bit integers.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def commitment_key(signing_key: Ed25519PrivateKey) -> bytes:
    """The commitments' HMAC key, derived from the server's audit signing key."""
    raw = signing_key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return hashlib.sha256(b"blindlink audit commitments\0" + raw).digest()


def match_set_sha256(
    key: bytes,
    requester_rows: npt.ArrayLike,
    custodian_rows: npt.ArrayLike,
    status: npt.ArrayLike,
) -> str:
    """HMAC-SHA256 hex of a run's decided pairs as a set: its (requester row, custodian row,
    status) triples in sorted order."""
    triples = np.column_stack([requester_rows, custodian_rows, status]).astype(np.int64)
    order = np.lexsort(triples.T[::-1])
    return hmac.new(key, triples[order].astype(">i8").tobytes(), hashlib.sha256).hexdigest()


def rows_sha256(key: bytes, *row_lists: Sequence[int]) -> str:
    """HMAC-SHA256 hex of lists of row references in their order: each list's length, then its
    rows."""
    digest = hmac.new(key, digestmod=hashlib.sha256)
    for rows in row_lists:
        digest.update(len(rows).to_bytes(8, "big"))
        digest.update(np.asarray(rows, dtype=">i8").tobytes())
    return digest.hexdigest()
