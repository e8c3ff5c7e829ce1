"""Hypothesis strategies for Bloom-filter encodings as the matching engine holds them: rows of
uint8, of any byte length, any density, with empty rows and repeated rows mixed in."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

# Lengths with and without a whole number of 64-bit words, below, at and above one AVX-512
# register, and the common 1024 bits.
BYTE_LENGTHS = (1, 3, 8, 13, 16, 64, 72, 128, 136)
# Thresholds at anonlink's edges: 0, negative, NaN, above 1, values that are not exact in
# binary, and ones so small that anonlink's popcount-difference bound overflows.
EDGE_THRESHOLDS = (0.0, -0.5, float("nan"), 1.0, 1.5, 2 / 3, 0.8, 1e-10, 1e-20)


@dataclass(frozen=True)
class EncodingPair:
    requester: np.ndarray
    custodian: np.ndarray


@st.composite
def encoding_pairs(draw: st.DrawFn, max_records: int = 40) -> EncodingPair:
    """Two parties' encodings of one length; some custodian rows copy or nearly copy requester
    rows, so that high similarities occur, and some rows are all zeros."""
    width = draw(st.sampled_from(BYTE_LENGTHS))
    density = draw(st.sampled_from((0.02, 0.1, 0.3, 0.5, 0.9)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sizes = [draw(st.integers(1, max_records)) for _ in range(2)]
    requester, custodian = (
        np.packbits(rng.random((n, width * 8)) < density, axis=1) for n in sizes
    )
    for _ in range(draw(st.integers(0, min(sizes)))):
        i, j = rng.integers(sizes[0]), rng.integers(sizes[1])
        custodian[j] = requester[i] ^ np.packbits(rng.random(width * 8) < 0.02)
    for rows in (requester, custodian):
        rows[rng.random(len(rows)) < draw(st.sampled_from((0.0, 0.1)))] = 0
    return EncodingPair(requester, custodian)


thresholds = st.one_of(st.sampled_from(EDGE_THRESHOLDS), st.floats(0.0, 1.0))
