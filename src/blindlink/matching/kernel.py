"""Dice coefficients of encodings: blindlink's native kernel, or anonlink and numpy without it.

The kernel (`_dice.c`, compiled when blindlink is installed where a C compiler exists) gives
exactly anonlink's candidates and bit-identical similarities, faster. It runs one of three code
paths, chosen once per process: `avx512` (AVX-512 with VPOPCNTQ), `avx2` or `scalar` (portable
C), the fastest the CPU runs unless the environment variable BLINDLINK_DICE_KERNEL names one.
`reference` is anonlink (all-pairs chunks) and numpy (pair lists): the fallback where the
kernel is not built, and the reference the kernel is tested against.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from bitarray import bitarray

from blindlink.errors import BlindlinkError
from blindlink.matching.blocking import band_keys as blocking_band_keys
from blindlink.matching.blocking import band_pairs
from blindlink.matching.linkage import to_bitarrays

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
    from anonlink.similarities import dice_coefficient_accelerated

try:
    from blindlink.matching import _dice  # type: ignore[attr-defined]
except ImportError as error:  # not compiled (no C compiler at install), or unloadable
    _dice = None
    _NATIVE_ERROR = str(error)

ENV = "BLINDLINK_DICE_KERNEL"
REFERENCE = "reference"
LANES = 8  # custodian records per interleaved block of the native layout
# Pair lists are computed in slices that stay in cache (the numpy reference).
DICE_SLICE = 65_536

logger = logging.getLogger(__name__)
_active: str | None = None

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # similarities, rows of each party


def paths() -> list[str]:
    """The paths this machine runs, fastest first; `reference` is always last."""
    return [*(_dice.supported_paths() if _dice else []), REFERENCE]


def select(path: str | None = None) -> str:
    """Use `path` from now on in this process (default: $BLINDLINK_DICE_KERNEL, else the
    fastest this machine runs), log the choice, and return it."""
    global _active
    wanted = path or os.environ.get(ENV) or paths()[0]
    if wanted not in paths():
        why = "" if _dice else f" (the native kernel is not available: {_NATIVE_ERROR})"
        raise BlindlinkError(
            f"Dice kernel path {wanted!r} ({ENV}) cannot run here{why}; choose one of "
            f"{', '.join(paths())}"
        )
    if wanted != REFERENCE:
        _dice.set_path(wanted)
    _active = wanted
    if _dice is None:
        logger.warning(
            "native Dice kernel not available (%s): matching uses anonlink and numpy, several "
            "times slower; install blindlink where a C compiler exists to build it",
            _NATIVE_ERROR,
        )
    else:
        logger.info("Dice kernel: %s (this CPU runs %s)", wanted, ", ".join(paths()))
    return wanted


def active() -> str:
    """The path in use, chosen (and logged) on first use."""
    return _active or select()


def describe(path: str) -> str:
    """What a path needs of the CPU, for logs and benchmark results."""
    return {
        "avx512": "native, AVX-512 (F, BW, VL) with VPOPCNTQ (AVX512_VPOPCNTDQ)",
        "avx2": "native, AVX2",
        "scalar": "native, portable C",
        REFERENCE: "anonlink and numpy (no native kernel)",
    }[path]


def popcounts(encodings: np.ndarray) -> np.ndarray:
    """Bits set in each encoding (rows of uint8), as uint32."""
    encodings = np.ascontiguousarray(encodings, dtype=np.uint8)
    if active() == REFERENCE:
        return np.bitwise_count(encodings).sum(axis=1, dtype=np.uint32)
    out = np.empty(len(encodings), dtype=np.uint32)
    _dice.popcounts(encodings, len(encodings), encodings.shape[1], out)
    return out


def pair_dice(
    encodings_a: np.ndarray,
    encodings_b: np.ndarray,
    rows_a: np.ndarray,
    rows_b: np.ndarray,
    popcount_a: np.ndarray,
    popcount_b: np.ndarray,
) -> np.ndarray:
    """Dice coefficients of the pairs (rows_a[i], rows_b[i]) (0 where both are empty), with
    their encodings' popcounts given (`popcounts`)."""
    rows_a = np.ascontiguousarray(rows_a, dtype=np.int64)
    rows_b = np.ascontiguousarray(rows_b, dtype=np.int64)
    if active() == REFERENCE:
        return _numpy_pair_dice(encodings_a, encodings_b, rows_a, rows_b, popcount_a, popcount_b)
    a = np.ascontiguousarray(encodings_a, dtype=np.uint8)
    b = np.ascontiguousarray(encodings_b, dtype=np.uint8)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"encodings of {a.shape[1]} and {b.shape[1]} bytes")
    out = np.empty(len(rows_a), dtype=np.float64)
    _dice.pair_dice(
        a,
        b,
        len(a),
        len(b),
        a.shape[1],
        rows_a,
        rows_b,
        np.ascontiguousarray(popcount_a, dtype=np.uint32),
        np.ascontiguousarray(popcount_b, dtype=np.uint32),
        len(rows_a),
        out,
    )
    return out


def _numpy_pair_dice(
    encodings_a: np.ndarray,
    encodings_b: np.ndarray,
    rows_a: np.ndarray,
    rows_b: np.ndarray,
    popcount_a: np.ndarray,
    popcount_b: np.ndarray,
) -> np.ndarray:
    words_a, words_b = _numpy_words(encodings_a), _numpy_words(encodings_b)
    common = np.empty(len(rows_a), dtype=np.int64)
    for start in range(0, len(rows_a), DICE_SLICE):
        block = words_a[rows_a[start : start + DICE_SLICE]]
        block &= words_b[rows_b[start : start + DICE_SLICE]]
        common[start : start + DICE_SLICE] = np.bitwise_count(block).sum(axis=1, dtype=np.int64)
    total = popcount_a[rows_a].astype(np.int64) + popcount_b[rows_b]
    return np.divide(2.0 * common, total, out=np.zeros(len(total)), where=total > 0)


def _numpy_words(encodings: np.ndarray) -> np.ndarray:
    """The encodings as 64-bit words where their length allows: a quarter of the work of
    counting bits byte by byte."""
    if encodings.shape[1] % 8 == 0:
        return np.ascontiguousarray(encodings).view(np.uint64)
    return encodings


@dataclass(frozen=True)
class KeyGroups:
    """Records grouped by a key both parties' records have (an LSH band's bits, or an agreed
    blocking key): group g pairs requester rows rows_a[start_a[g]:][:count_a[g]] with custodian
    rows rows_b[start_b[g]:][:count_b[g]], in increasing order of key. Within a group, rows keep
    the order they were given in."""

    keys_a: np.ndarray  # the inputs, for the reference path
    keys_b: np.ndarray
    rows_a: np.ndarray  # int64, sorted by key
    rows_b: np.ndarray
    start_a: np.ndarray  # int64, one per key both parties have
    count_a: np.ndarray
    start_b: np.ndarray
    count_b: np.ndarray
    members_a: np.ndarray  # the inputs' rows, for the reference path
    members_b: np.ndarray

    @classmethod
    def of(
        cls, keys_a: np.ndarray, rows_a: np.ndarray, keys_b: np.ndarray, rows_b: np.ndarray
    ) -> KeyGroups:
        """Group records `rows_x` (each at most once) by their keys `keys_x` (uint64)."""
        if active() == REFERENCE:
            return cls._numpy_of(keys_a, rows_a, keys_b, rows_b)
        # Copies, which the kernel sorts by key in place.
        sorted_keys = [np.array(keys, dtype=np.uint64) for keys in (keys_a, keys_b)]
        ordered_a, ordered_b = (np.array(rows, dtype=np.int64) for rows in (rows_a, rows_b))
        runs = np.empty((4, min(len(ordered_a), len(ordered_b))), dtype=np.int64)
        groups = _dice.group_keys(
            sorted_keys[0],
            ordered_a,
            len(ordered_a),
            sorted_keys[1],
            ordered_b,
            len(ordered_b),
            *runs,
        )
        start_a, count_a, start_b, count_b = runs[:, :groups]
        return cls(
            keys_a, keys_b, ordered_a, ordered_b, start_a, count_a, start_b, count_b, rows_a, rows_b
        )

    @classmethod
    def _numpy_of(
        cls, keys_a: np.ndarray, rows_a: np.ndarray, keys_b: np.ndarray, rows_b: np.ndarray
    ) -> KeyGroups:
        sides = []
        for keys, rows in ((keys_a, rows_a), (keys_b, rows_b)):
            order = np.argsort(keys, kind="stable")
            ordered = keys[order]
            first = np.ones(len(ordered), dtype=bool)  # of its key
            first[1:] = ordered[1:] != ordered[:-1]
            start = np.flatnonzero(first)
            count = np.diff(np.r_[start, len(ordered)])
            sides.append((ordered[start], rows[order].astype(np.int64), start, count))
        (va, ra, sa, ca), (vb, rb, sb, cb) = sides
        _, in_a, in_b = np.intersect1d(va, vb, assume_unique=True, return_indices=True)
        return cls(
            keys_a,
            keys_b,
            ra,
            rb,
            sa[in_a].astype(np.int64),
            ca[in_a].astype(np.int64),
            sb[in_b].astype(np.int64),
            cb[in_b].astype(np.int64),
            rows_a,
            rows_b,
        )

    @property
    def comparisons(self) -> int:
        return int((self.count_a * self.count_b).sum())


def band_keys(columns: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Per record, the sampled bits of one LSH band packed into an integer key, as
    `blocking.band_keys` computes them (`columns`: the encodings transposed)."""
    if active() == REFERENCE:
        return blocking_band_keys(columns, positions)
    columns = np.ascontiguousarray(columns, dtype=np.uint8)
    out = np.empty(columns.shape[1], dtype=np.uint64)
    _dice.band_keys(
        columns,
        columns.shape[0],
        columns.shape[1],
        np.ascontiguousarray(positions, dtype=np.int64),
        len(positions),
        out,
    )
    return out


class BestPairs:
    """Each requester record's candidates among the pairs of several groupings (LSH bands,
    blocking keys): the pairs at or above `threshold` and its `best` most similar, each pair
    once however many groupings it is in. The native path keeps every record's best in a heap
    across groupings, so that only candidates are ever listed."""

    def __init__(
        self,
        encodings_a: np.ndarray,
        encodings_b: np.ndarray,
        popcount_a: np.ndarray,
        popcount_b: np.ndarray,
        threshold: float,
        best: int,
    ) -> None:
        self.encodings = (
            np.ascontiguousarray(encodings_a, dtype=np.uint8),
            np.ascontiguousarray(encodings_b, dtype=np.uint8),
        )
        self.popcounts = (
            np.ascontiguousarray(popcount_a, dtype=np.uint32),
            np.ascontiguousarray(popcount_b, dtype=np.uint32),
        )
        self.threshold = threshold
        self.best = best
        self.native = active() != REFERENCE
        # Per requester record, `best` heap nodes as the kernel lays them out: a float64
        # similarity and an int64 custodian row, -1 while unused.
        self._heaps = np.zeros((len(encodings_a) if self.native else 0, best, 2), dtype=np.int64)
        self._heaps[..., 1] = -1
        # Native: pairs at or above the threshold left out of the best (maybe repeated);
        # reference: each grouping's candidates.
        self._parts: list[Pairs] = []

    def add(self, groups: KeyGroups) -> None:
        """Offer every pair of the groups."""
        if not self.native:
            self._parts.append(
                _numpy_group_pairs(
                    *self.encodings, *self.popcounts, groups, self.threshold, self.best
                )
            )
            return
        (a, b), (pop_a, pop_b) = self.encodings, self.popcounts
        sims, r0, r1 = _dice.offer_groups(
            a,
            b,
            len(a),
            len(b),
            a.shape[1],
            pop_a,
            pop_b,
            groups.rows_a,
            groups.rows_b,
            len(groups.rows_a),
            len(groups.rows_b),
            groups.start_a,
            groups.count_a,
            groups.start_b,
            groups.count_b,
            len(groups.start_a),
            self.threshold,
            self.best,
            self._heaps,
        )
        if sims:
            self._parts.append(
                (
                    np.frombuffer(sims, dtype=np.float64),
                    np.frombuffer(r0, dtype=np.int64),
                    np.frombuffer(r1, dtype=np.int64),
                )
            )

    def pairs(self) -> Pairs:
        """The candidates, each once, in `kept`'s order."""
        if not self.native:
            return kept(_concatenated(self._parts), self.threshold, self.best)
        # Pairs at or above the threshold left out of the best: each once, in order.
        left = kept(_concatenated(self._parts), self.threshold, 0)
        room = self._heaps.shape[0] * self.best + len(left[0])
        out: Pairs = (
            np.empty(room),
            np.empty(room, dtype=np.int64),
            np.empty(room, dtype=np.int64),
        )
        n = _dice.heap_pairs(self._heaps, len(self._heaps), self.best, *left, len(left[0]), *out)
        return out[0][:n], out[1][:n], out[2][:n]


def _numpy_group_pairs(
    encodings_a: np.ndarray,
    encodings_b: np.ndarray,
    popcount_a: np.ndarray,
    popcount_b: np.ndarray,
    groups: KeyGroups,
    threshold: float,
    best: int,
) -> Pairs:
    """The reference: the groups' pairs listed in slices, their Dice, then `kept_pairs`."""
    parts = []
    for a, b in band_pairs(groups.keys_a, groups.keys_b):
        a, b = groups.members_a[a], groups.members_b[b]
        sims = pair_dice(encodings_a, encodings_b, a, b, popcount_a, popcount_b)
        # A slice holds every pair of its requester records, so its best are theirs.
        keep = kept_pairs(sims, a, b, threshold, best)
        parts.append((sims[keep], a[keep].astype(np.int64), b[keep].astype(np.int64)))
    return _concatenated(parts)


def _concatenated(parts: list[Pairs]) -> Pairs:
    if not parts:
        return np.empty(0), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    sims, r0, r1 = (np.concatenate(column) for column in zip(*parts, strict=True))
    return sims, r0, r1


def kept_pairs(
    sim: np.ndarray, rows0: np.ndarray, rows1: np.ndarray, threshold: float, best: int
) -> np.ndarray:
    """Which pairs (each listed once) are at or above `threshold` or among their requester
    record's `best` by similarity (ties broken by custodian row)."""
    keep = sim >= threshold
    if best and len(sim):
        order = np.lexsort((rows1, -sim, rows0))
        keep[order[_ranks(rows0[order]) < best]] = True
    return keep


def kept(pairs: Pairs, threshold: float, best: int) -> Pairs:
    """The pairs `kept_pairs` keeps, each once though listed several times (always with the
    same similarity), ordered by requester row, then similarity descending, then custodian
    row: the order `merge_kept` merges."""
    sim, rows0, rows1 = pairs
    order = np.lexsort((rows1, -sim, rows0))
    grouped, partners = rows0[order], rows1[order]
    first = np.ones(len(order), dtype=bool)  # of its pair; no pairs at all when none were found
    first[1:] = (grouped[1:] != grouped[:-1]) | (partners[1:] != partners[:-1])
    order = order[first]
    keep = sim[order] >= threshold
    if best:
        keep |= _ranks(rows0[order]) < best
    order = order[keep]
    return sim[order], rows0[order], rows1[order]


def merge_kept(parts: list[Pairs], threshold: float, best: int) -> Pairs:
    """`kept` of the parts' pairs together, each part already in `kept`'s order: on the native
    path a linear merge (no sort), so that the pairs already kept are not sorted again."""
    if not parts:
        return _concatenated(parts)
    if active() == REFERENCE:
        return kept(_concatenated(parts), threshold, best)
    merged = parts[0]
    for part in parts[1:]:
        n = len(merged[0]) + len(part[0])
        out: Pairs = (np.empty(n), np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64))
        size = _dice.merge_kept(
            *(np.ascontiguousarray(column) for column in merged),
            len(merged[0]),
            *(np.ascontiguousarray(column) for column in part),
            len(part[0]),
            threshold,
            best,
            *out,
        )
        merged = (out[0][:size], out[1][:size], out[2][:size])
    return merged


def _ranks(grouped: np.ndarray) -> np.ndarray:
    """Each element's position within its run of equal values."""
    if not len(grouped):
        return np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(grouped[1:] != grouped[:-1]) + 1]
    return np.arange(len(grouped)) - np.repeat(starts, np.diff(np.r_[starts, len(grouped)]))


class AllPairs:
    """Both parties' encodings in the form the active path compares all pairs in, made once per
    worker: for the native kernel the requester's as 64-bit words and the custodian's
    interleaved in blocks of 8 records (as much memory again as the encodings); for anonlink,
    bitarrays."""

    def __init__(self, requester: np.ndarray, custodian: np.ndarray) -> None:
        self.requester = requester
        self.custodian = custodian
        self.bits = requester.shape[1] * 8

    @cached_property
    def _native(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        words = _padded_words(self.requester, len(self.requester))
        blocks = -(-len(self.custodian) // LANES)
        custodian = _padded_words(self.custodian, blocks * LANES)
        interleaved = np.ascontiguousarray(custodian.reshape(blocks, LANES, -1).transpose(0, 2, 1))
        pop_b = np.zeros(blocks * LANES, dtype=np.uint32)
        pop_b[: len(self.custodian)] = popcounts(self.custodian)
        return words, popcounts(self.requester), interleaved, pop_b

    @cached_property
    def _bitarrays(self) -> tuple[list[bitarray], list[bitarray]]:
        return (
            to_bitarrays(self.requester.tobytes(), self.bits),
            to_bitarrays(self.custodian.tobytes(), self.bits),
        )

    def pairs(
        self,
        requester_rows: slice | np.ndarray,
        custodian_range: tuple[int, int],
        threshold: float,
        k: int | None = None,
    ) -> Pairs:
        """anonlink's candidates (`dice_coefficient_accelerated`) of the selected requester rows
        against the custodian rows in [start, end): pairs at or above `threshold`, at most `k`
        per requester row. Rows are positions in the selection and from `start`, unsorted."""
        start, end = custodian_range
        if active() == REFERENCE:
            requester, custodian = self._bitarrays
            if isinstance(requester_rows, slice):
                chosen = requester[requester_rows]
            else:
                chosen = [requester[r] for r in requester_rows]
            return anonlink_pairs(chosen, custodian[start:end], threshold, k)
        words, pop_a, interleaved, pop_b = self._native
        a = np.ascontiguousarray(words[requester_rows])
        sims, r0, r1 = _dice.threshold_pairs(
            a,
            np.ascontiguousarray(pop_a[requester_rows]),
            interleaved,
            pop_b,
            len(a),
            words.shape[1],
            self.bits,
            start,
            end,
            threshold,
            k or 0,
        )
        return (
            np.frombuffer(sims, dtype=np.float64),
            np.frombuffer(r0, dtype=np.int64),
            np.frombuffer(r1, dtype=np.int64),
        )


def anonlink_pairs(
    requester: list[bitarray], custodian: list[bitarray], threshold: float, k: int | None
) -> Pairs:
    """anonlink's Dice of the pairs at or above `threshold` (at most `k` per requester
    record): similarities and the two lists' row positions."""
    # anonlink's own k (per requester record), not find_candidate_pairs', which also limits
    # each custodian record to k.
    sims, (r0, r1) = dice_coefficient_accelerated([requester, custodian], threshold, k)
    return (
        np.frombuffer(sims, dtype=np.float64),
        np.frombuffer(r0, dtype=np.uint32).astype(np.int64),
        np.frombuffer(r1, dtype=np.uint32).astype(np.int64),
    )


def _padded_words(encodings: np.ndarray, rows: int) -> np.ndarray:
    """(rows, words) uint64: the encodings zero-padded to whole words (zeros change no
    popcount) and with zero rows up to `rows`; a view when nothing needs padding."""
    n, width = encodings.shape
    words = -(-width // 8)
    if rows == n and width == words * 8:
        return np.ascontiguousarray(encodings).view(np.uint64)
    padded = np.zeros((rows, words * 8), dtype=np.uint8)
    padded[:n, :width] = encodings
    return padded.view(np.uint64)
