"""A custodian that holds people more than once: each requester record's candidates that are
records of the same person as its best candidate (its *kin*) are set aside before deciding.

When the custodian holds a person twice, a requester record of that person has two candidates
that are both its partner. Kept, the second is the record's runner-up, which the match model
takes for the best of its non-matches: the runner-ups then describe matches, the model finds no
separation or few matches, and the run falls back (measured on FEBRL2 and FEBRL3 against every
other record of theirs: released F* 0.38 to 0.49 where the best fixed threshold reaches 0.92
to 0.99). The agreement says whether the custodian may hold people repeatedly
(`matching.custodian_duplicates`); only then are kin set aside, because look-alikes of
different people (namesakes, family members at one address) would be set aside too, and the
model would no longer see them (measured on Splink's fake_20000 linked one record per person on
each side, hardened: with a tenth shared, runs the model refuses otherwise were fitted with kin
set aside and released at precision 0.82 and 0.88, estimated 0.11 and 0.04 too high).

A candidate is kin of the record's best candidate when the Dice score of the two custodian
records reaches the kin cut: the agreed threshold, or for a calibrated rule the agreed fallback
threshold, the score the parties agreed to call a match when the model cannot judge. The cut is
not the model's own: searching it (from the fallback threshold down until the model could be
fitted and was 0.99 sure at the cut, then following that score down) decided FEBRL2 and FEBRL3
against every other record better (F* 0.037, 0.003, 0.041 and 0.001 below the best fixed
threshold's, against 0.091, 0.003, 0.041 and 0.001 with the fallback threshold), but the same
runs with every true pair removed were then fitted on look-alikes and released 217 to 1,062
wrong pairs each, where with the fallback threshold as the cut they are refused and release 3
to 7. Taking the run's own threshold as the cut was worse: look-alikes set aside lowered the
threshold, which set aside more (generated data, 10k per party, unhardened: released precision
0.13 with a tenth shared).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from blindlink.matching import kernel
from blindlink.matching.engine import Candidates
from blindlink.matching.match_model import RANKED
from blindlink.matching.rules import CalibratedThreshold, DecisionRule

# Candidates found per requester record when kin are set aside: the model's RANKED once the kin
# of most records are gone.
KIN_CANDIDATES = 2 * RANKED
# The custodian's encodings of the given rows (of the candidates' custodian records).
EncodingsOf = Callable[[np.ndarray], np.ndarray]


def without_kin(
    candidates: Candidates, custodian: EncodingsOf, requester_records: int, rule: DecisionRule
) -> tuple[Candidates, float]:
    """`candidates` without the kin of each requester record's best candidate, and the kin cut
    (the Dice score between custodian records from which they are kin)."""
    best = _best_candidates(candidates, requester_records)
    kin_scores = _kin_scores(candidates, custodian, best)
    chosen = rule.threshold
    cut = chosen.fallback_threshold if isinstance(chosen, CalibratedThreshold) else chosen.threshold
    return _kept(candidates, best, kin_scores, cut), cut


def _best_candidates(candidates: Candidates, requester_records: int) -> np.ndarray:
    """Per requester record, the custodian row of its best candidate (-1 for none)."""
    rows = candidates.requester_rows
    first = np.unique(rows, return_index=True)[1]  # candidates are sorted best first
    best = np.full(requester_records, -1, dtype=np.int64)
    best[rows[first]] = candidates.custodian_rows[first]
    return best


def _kin_scores(candidates: Candidates, custodian: EncodingsOf, best: np.ndarray) -> np.ndarray:
    """Per candidate, the Dice score between its custodian record and its requester record's
    best candidate (1 for the best candidate itself), from the encodings of those records."""
    partner = best[candidates.requester_rows]
    rows = np.unique(np.r_[partner, candidates.custodian_rows])
    encodings = custodian(rows)
    if len(rows) and not encodings.shape[1]:
        raise ValueError(f"no encodings for the {len(rows)} custodian records of the candidates")
    counts = kernel.popcounts(encodings)
    return kernel.pair_dice(
        encodings,
        encodings,
        np.searchsorted(rows, partner),
        np.searchsorted(rows, candidates.custodian_rows),
        counts,
        counts,
    )


def _kept(
    candidates: Candidates, best: np.ndarray, kin_scores: np.ndarray, cut: float
) -> Candidates:
    """The candidates that are their record's best or not its kin at `cut`."""
    rows = candidates.custodian_rows
    keep = (rows == best[candidates.requester_rows]) | (kin_scores < cut)
    return replace(
        candidates,
        similarities=candidates.similarities[keep],
        requester_rows=candidates.requester_rows[keep],
        custodian_rows=rows[keep],
    )
