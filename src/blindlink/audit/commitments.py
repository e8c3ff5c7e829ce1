"""Hashes that audit entries commit to: a run's decided pairs, and the rows of a release.

Both are over big-endian 64-bit integers, so that `admin verify` recomputes them from the
database exactly as the server computed them when it recorded the entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def match_set_sha256(
    requester_rows: npt.ArrayLike, custodian_rows: npt.ArrayLike, status: npt.ArrayLike
) -> str:
    """SHA-256 hex of a run's decided pairs as a set: its (requester row, custodian row,
    status) triples in sorted order."""
    triples = np.column_stack([requester_rows, custodian_rows, status]).astype(np.int64)
    order = np.lexsort(triples.T[::-1])
    return hashlib.sha256(triples[order].astype(">i8").tobytes()).hexdigest()


def rows_sha256(*row_lists: Sequence[int]) -> str:
    """SHA-256 hex of lists of row references in their order: each list's length, then its
    rows."""
    digest = hashlib.sha256()
    for rows in row_lists:
        digest.update(len(rows).to_bytes(8, "big"))
        digest.update(np.asarray(rows, dtype=">i8").tobytes())
    return digest.hexdigest()
