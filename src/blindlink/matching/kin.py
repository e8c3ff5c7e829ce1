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
each side: with a tenth shared, runs the model refuses otherwise were fitted with kin set aside
and released at precision 0.82 to 1.00, estimated up to 0.11 too high).

A candidate is kin of the record's best candidate when the Dice score of the two custodian
records reaches the kin cut, the Dice threshold of the run: custodian records that agree as
closely as the run's matches must are taken for one person. For a fixed threshold the cut is the
threshold. A calibrated rule's threshold depends on what is set aside, so the cut is found:
- it starts at the highest cut, from the agreed fallback threshold down to the agreed lower
  bound, at which the match model of the candidates left can be fitted and chooses a threshold
  no higher than the cut (higher up, the person's other records left among the runner-ups
  keep the model from fitting, or make it choose a threshold above them);
- then the cut becomes the threshold the model chooses, until it stops moving or the model can
  no longer be fitted. It never rises: each rise lets more kin back among the runner-ups and
  raises the threshold again.
Measured on FEBRL2 and FEBRL3 against every other record, un- and hardened: F* 0.033, 0.003,
0.012 and 0.001 below the best fixed threshold's (with the fallback threshold as the start:
no model fitted in two of the four).
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
ITERATIONS = 20
# The custodian's encodings of the given rows (of the candidates' custodian records).
EncodingsOf = Callable[[np.ndarray], np.ndarray]
# The first cut is sought from the fallback threshold down in steps of this.
SEARCH_STEP = 0.01


def without_kin(
    candidates: Candidates,
    custodian: EncodingsOf,
    requester_records: int,
    rule: DecisionRule,
    threshold_of: Callable[[Candidates], float | None],
) -> tuple[Candidates, float]:
    """`candidates` without the kin of each requester record's best candidate, and the kin cut
    (the Dice score between custodian records from which they are kin). `threshold_of`: the
    Dice threshold a calibrated rule chooses on given candidates, None where its model cannot
    be fitted."""
    best = _best_candidates(candidates, requester_records)
    kin_scores = _kin_scores(candidates, custodian, best)
    chosen = rule.threshold
    if not isinstance(chosen, CalibratedThreshold):
        cut = chosen.threshold
        return _kept(candidates, best, kin_scores, cut), cut

    def chosen_at(cut: float) -> float | None:
        return threshold_of(_kept(candidates, best, kin_scores, cut))

    cut = _consistent_start(chosen, chosen_at)
    threshold = chosen_at(cut)
    for _ in range(ITERATIONS):
        if threshold is None or threshold >= cut:
            break
        following = chosen_at(threshold)
        if following is None:
            break  # the last cut at which the model could be fitted
        cut, threshold = threshold, following
    return _kept(candidates, best, kin_scores, cut), cut


def _consistent_start(
    chosen: CalibratedThreshold, chosen_at: Callable[[float], float | None]
) -> float:
    """The highest cut, from the fallback threshold down by SEARCH_STEP to the lower bound, at
    which the run's model can be fitted and chooses a threshold no higher than the cut, so that
    what is set aside is what the run calls a match; the fallback threshold if none."""
    cut = chosen.fallback_threshold
    while cut >= chosen.bounds[0] - 1e-9:
        threshold = chosen_at(cut)
        if threshold is not None and threshold <= cut:
            return cut
        cut = round(cut - SEARCH_STEP, 6)
    return chosen.fallback_threshold


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
