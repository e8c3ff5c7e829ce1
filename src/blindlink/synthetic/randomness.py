"""Counter-based randomness: every draw is a pure function of (seed, stream, index, slot).

Record i's values do not depend on which other records are generated with it, so files can be
written in chunks of any size, or a custodian row's person regenerated for a requester batch,
without keeping anything per record in memory.
"""

from dataclasses import dataclass

import numpy as np

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_FEISTEL_ROUNDS = 4


def stream_key(seed: int, *stream: int) -> np.uint64:
    """A 64-bit key for one named stream of a seed (e.g. the custodian's corruption)."""
    state = np.random.SeedSequence([seed, *stream]).generate_state(1, np.uint64)
    return np.uint64(state[0])


def _mix(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 finalizer: a bijection of uint64 whose outputs look independent."""
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


def uniforms(key: np.uint64, index: np.ndarray, slots: int) -> np.ndarray:
    """Uniforms in [0, 1), shape (len(index), slots): row r holds the draws of record index[r]."""
    counter = index.astype(np.uint64)[:, None] * np.uint64(slots) + np.arange(
        slots, dtype=np.uint64
    )
    with np.errstate(over="ignore"):
        bits = _mix(key + (counter + np.uint64(1)) * _GAMMA)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass(frozen=True)
class Permutation:
    """A keyed random permutation of range(size), evaluated for any indices without a table:
    a balanced Feistel network on the smallest even number of bits covering `size`, with cycle
    walking back into range."""

    key: np.uint64
    size: int

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"a permutation needs a size >= 1, got {self.size}")

    def __call__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.uint64)
        if index.size and int(index.max()) >= self.size:
            raise ValueError(f"index {int(index.max())} is outside range({self.size})")
        out = self._feistel(index)
        while (outside := np.flatnonzero(out >= np.uint64(self.size))).size:
            out[outside] = self._feistel(out[outside])
        return out.astype(np.int64)

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        half = max(1, (int(self.size - 1).bit_length() + 1) // 2)
        mask = np.uint64((1 << half) - 1)
        left, right = x >> np.uint64(half), x & mask
        with np.errstate(over="ignore"):
            for round_ in range(_FEISTEL_ROUNDS):
                round_key = self.key + np.uint64(round_ + 1) * _GAMMA
                left, right = right, left ^ (_mix(right + round_key) & mask)
        return (left << np.uint64(half)) | right
