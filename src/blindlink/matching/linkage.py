"""Two-party linkage of encodings with anonlink: Dice candidates above a threshold, greedy 1:1.

The requester's encodings are compared in slices so that progress can be reported; the merged
candidates are put in exactly the order anonlink's own merge uses, so the result is the same as
one `find_candidate_pairs` call over all records.
"""

from __future__ import annotations

import warnings
from array import array
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from bitarray import bitarray

with warnings.catch_warnings():
    # anonlink imports the deprecated pkg_resources at import time; nothing for users to act on.
    warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
    from anonlink.candidate_generation import find_candidate_pairs
    from anonlink.similarities import dice_coefficient_accelerated
    from anonlink.solving import greedy_solve

# Comparisons per slice: large enough that anonlink's per-call overhead is negligible.
SLICE_COMPARISONS = 50_000_000

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Matches:
    """1:1 matches: requester_rows[i] matched custodian_rows[i] with similarities[i]."""

    requester_rows: np.ndarray
    custodian_rows: np.ndarray
    similarities: np.ndarray

    def __len__(self) -> int:
        return len(self.requester_rows)


def to_bitarrays(payload: bytes, bit_length: int) -> list[bitarray]:
    """Split an encodings payload into one bitarray per record."""
    size = bit_length // 8
    result = []
    for start in range(0, len(payload), size):
        record = bitarray()
        record.frombytes(payload[start : start + size])
        result.append(record)
    return result


def find_candidates(
    requester: list[bitarray],
    custodian: list[bitarray],
    threshold: float,
    progress: Progress = lambda done, total: None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs with Dice similarity >= threshold, as (similarities, requester rows, custodian
    rows) sorted by decreasing similarity, then requester row, then custodian row."""
    total = len(requester) * len(custodian)
    step = max(1, SLICE_COMPARISONS // max(1, len(custodian)))
    sims, rows0, rows1 = [], [], []
    for start in range(0, len(requester), step):
        block = requester[start : start + step]
        s, _, (r0, r1) = find_candidate_pairs(
            [block, custodian], dice_coefficient_accelerated, threshold
        )
        sims.append(np.frombuffer(s, dtype=np.float64))
        rows0.append(np.frombuffer(r0, dtype=np.uint32).astype(np.int64) + start)
        rows1.append(np.frombuffer(r1, dtype=np.uint32).astype(np.int64))
        progress(min(total, (start + len(block)) * len(custodian)), total)
    sim = np.concatenate(sims) if sims else np.empty(0)
    r0 = np.concatenate(rows0) if rows0 else np.empty(0, dtype=np.int64)
    r1 = np.concatenate(rows1) if rows1 else np.empty(0, dtype=np.int64)
    order = np.lexsort((r1, r0, -sim))
    return sim[order], r0[order], r1[order]


def solve_one_to_one(sim: np.ndarray, rows0: np.ndarray, rows1: np.ndarray) -> Matches:
    """Greedy 1:1 assignment (anonlink `greedy_solve`) over sorted candidates."""
    n = len(sim)
    candidates = (
        array("d", sim.astype(np.float64).tobytes()),
        (array("I", bytes(4 * n)), array("I", np.ones(n, dtype=np.uint32).tobytes())),
        (
            array("I", rows0.astype(np.uint32).tobytes()),
            array("I", rows1.astype(np.uint32).tobytes()),
        ),
    )
    pairs = []
    for group in greedy_solve(candidates):
        by_dataset = dict(group)
        pairs.append((by_dataset[0], by_dataset[1]))
    pairs.sort()
    req = np.array([p[0] for p in pairs], dtype=np.int64)
    cus = np.array([p[1] for p in pairs], dtype=np.int64)
    similarity = _pair_similarities(sim, rows0, rows1, req, cus)
    return Matches(req, cus, similarity)


def _pair_similarities(
    sim: np.ndarray, rows0: np.ndarray, rows1: np.ndarray, req: np.ndarray, cus: np.ndarray
) -> np.ndarray:
    if not len(req):
        return np.empty(0)
    width = int(max(rows1.max(), cus.max())) + 1
    keys = rows0 * width + rows1
    order = np.argsort(keys, kind="stable")
    positions = np.searchsorted(keys[order], req * width + cus)
    return sim[order][positions]


def match(
    requester: list[bitarray],
    custodian: list[bitarray],
    threshold: float,
    progress: Progress = lambda done, total: None,
) -> Matches:
    """Candidates above `threshold`, then greedy 1:1 matches."""
    sim, rows0, rows1 = find_candidates(requester, custodian, threshold, progress)
    return solve_one_to_one(sim, rows0, rows1)


def ambiguous(
    sim: np.ndarray, rows0: np.ndarray, rows1: np.ndarray, matches: Matches, margin: float
) -> np.ndarray:
    """For each match, whether a rival candidate (another candidate pair sharing either of its
    records) has a similarity within `margin` of the match's own. Rivals are the candidates at
    or above the run's threshold; lower ones were never computed."""
    if margin <= 0 or not len(matches):
        return np.zeros(len(matches), dtype=bool)
    rival = np.maximum(
        _best_rival(rows0, rows1, sim, matches.requester_rows, matches.custodian_rows),
        _best_rival(rows1, rows0, sim, matches.custodian_rows, matches.requester_rows),
    )
    return matches.similarities - rival < margin


def _best_rival(
    own: np.ndarray,
    partner: np.ndarray,
    sim: np.ndarray,
    matched_own: np.ndarray,
    matched_partner: np.ndarray,
) -> np.ndarray:
    """Per match, the best similarity of `matched_own`'s candidates other than its partner
    (-inf when it has none)."""
    order = np.lexsort((-sim, own))  # by record, best candidate first
    own_sorted, partner_sorted, sim_sorted = own[order], partner[order], sim[order]
    starts = np.searchsorted(own_sorted, matched_own, side="left")
    ends = np.searchsorted(own_sorted, matched_own, side="right")
    rival = np.full(len(matched_own), -np.inf)
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        for j in range(start, min(end, start + 2)):  # the best two hold the best rival
            if partner_sorted[j] != matched_partner[i]:
                rival[i] = sim_sorted[j]
                break
    return rival
