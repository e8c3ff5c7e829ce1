"""From candidate pairs to matches: anonlink's greedy 1:1 solving and the ambiguity rule.

Candidates come from `blindlink.matching.engine`, sorted as anonlink sorts them.
"""

from __future__ import annotations

import warnings
from array import array
from dataclasses import dataclass

import numpy as np
from bitarray import bitarray

with warnings.catch_warnings():
    # anonlink imports the deprecated pkg_resources at import time; nothing for users to act on.
    warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
    from anonlink.solving import greedy_solve


@dataclass(frozen=True)
class Matches:
    """1:1 matches: requester_rows[i] matched custodian_rows[i] with similarities[i]."""

    requester_rows: np.ndarray
    custodian_rows: np.ndarray
    similarities: np.ndarray

    def __len__(self) -> int:
        return len(self.requester_rows)

    def subset(self, mask: np.ndarray) -> Matches:
        return Matches(
            self.requester_rows[mask], self.custodian_rows[mask], self.similarities[mask]
        )


def to_bitarrays(payload: bytes, bit_length: int) -> list[bitarray]:
    """Split an encodings payload into one bitarray per record."""
    size = bit_length // 8
    result = []
    for start in range(0, len(payload), size):
        record = bitarray()
        record.frombytes(payload[start : start + size])
        result.append(record)
    return result


def solve_one_to_one(sim: np.ndarray, rows0: np.ndarray, rows1: np.ndarray) -> Matches:
    """Greedy 1:1 assignment over candidates in the order given (best first): a pair is
    taken when neither of its records is taken yet. The same matches as anonlink's
    `greedy_solve` (a test compares them), found in rounds: a pair that comes first among
    the remaining pairs of both its records is taken by greedy, so each round takes all such
    pairs at once and drops the pairs of the records it took."""
    taken = np.zeros(len(sim), dtype=bool)
    alive = np.arange(len(sim))
    while len(alive):
        first0 = np.zeros(len(alive), dtype=bool)
        first0[np.unique(rows0[alive], return_index=True)[1]] = True
        first1 = np.zeros(len(alive), dtype=bool)
        first1[np.unique(rows1[alive], return_index=True)[1]] = True
        chosen = alive[first0 & first1]
        taken[chosen] = True
        alive = alive[~np.isin(rows0[alive], rows0[chosen]) & ~np.isin(rows1[alive], rows1[chosen])]
    order = np.flatnonzero(taken)
    order = order[np.argsort(rows0[order], kind="stable")]
    return Matches(
        rows0[order].astype(np.int64), rows1[order].astype(np.int64), sim[order].astype(float)
    )


def anonlink_one_to_one(sim: np.ndarray, rows0: np.ndarray, rows1: np.ndarray) -> Matches:
    """anonlink's `greedy_solve` over the same candidates: the reference for
    solve_one_to_one."""
    n = len(sim)
    candidates = (
        array("d", sim.astype(np.float64).tobytes()),
        (array("I", bytes(4 * n)), array("I", np.ones(n, dtype=np.uint32).tobytes())),
        (
            array("I", rows0.astype(np.uint32).tobytes()),
            array("I", rows1.astype(np.uint32).tobytes()),
        ),
    )
    pairs = sorted((dict(group)[0], dict(group)[1]) for group in greedy_solve(candidates))
    req = np.array([p[0] for p in pairs], dtype=np.int64)
    cus = np.array([p[1] for p in pairs], dtype=np.int64)
    return Matches(req, cus, pair_values(sim, rows0, rows1, req, cus))


def pair_values(
    values: np.ndarray, rows0: np.ndarray, rows1: np.ndarray, req: np.ndarray, cus: np.ndarray
) -> np.ndarray:
    """The values of the pairs (req[i], cus[i]) in a list of pairs (rows0, rows1) holding
    each of them."""
    if not len(req):
        return np.empty(0)
    width = int(max(rows1.max(), cus.max())) + 1
    keys = rows0 * width + rows1
    order = np.argsort(keys, kind="stable")
    positions = np.searchsorted(keys[order], req * width + cus)
    return values[order][positions]


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
