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
records reaches the kin cut. For a fixed threshold the cut is the threshold: what the agreement
calls a match. For a calibrated rule it is where the run's match model is all but sure
(KIN_PROBABILITY) that two records are one person, and that model depends on what is set aside:
- the first cut is the highest, from the agreed fallback threshold down to the agreed lower
  bound, at which the model of the candidates left can be fitted and is that sure at the cut
  (higher up, the person's other records left among the runner-ups keep the model from
  fitting, or from being sure); failing that, the highest at which it can be fitted;
- then the cut becomes the lowest score at which the model is that sure, until it stops moving
  or the model can no longer be fitted. It never rises: each rise lets more kin back among the
  runner-ups and raises it again.
Taking the run's threshold as the cut instead (where the model is only more sure than not)
set aside look-alikes, whose absence among the runner-ups lowered the threshold, which set
aside more: on generated data of 10k per party whose custodian holds a fifth of its people
twice, unhardened, released precision fell to 0.13 with a tenth shared and 0.68 with half.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from blindlink.matching import kernel
from blindlink.matching.engine import Candidates
from blindlink.matching.linkage import solve_one_to_one
from blindlink.matching.match_model import RANKED, ModelUnfit, RecordScores, fit_match_model
from blindlink.matching.rules import CalibratedThreshold, DecisionRule

# How sure the match model must be that a custodian record is the same person as a requester
# record's best candidate, at the Dice score between the two, to set it aside. Measured on the
# cases below: 0.9 sets aside the same records as 0.99.
KIN_PROBABILITY = 0.99
# Candidates found per requester record when kin are set aside: the model's RANKED once the kin
# of most records are gone.
KIN_CANDIDATES = 2 * RANKED
ITERATIONS = 20
# The custodian's encodings of the given rows (of the candidates' custodian records).
EncodingsOf = Callable[[np.ndarray], np.ndarray]
# The first cut is sought from the fallback threshold down in steps of this.
SEARCH_STEP = 0.01


def without_kin(
    candidates: Candidates, custodian: EncodingsOf, requester_records: int, rule: DecisionRule
) -> tuple[Candidates, float]:
    """`candidates` without the kin of each requester record's best candidate, and the kin cut
    (the Dice score between custodian records from which they are kin)."""
    best = _best_candidates(candidates, requester_records)
    kin_scores = _kin_scores(candidates, custodian, best)
    chosen = rule.threshold
    if not isinstance(chosen, CalibratedThreshold):
        cut = chosen.threshold
        return _kept(candidates, best, kin_scores, cut), cut

    def sure_from(cut: float) -> float | None:
        return _sure_from(_kept(candidates, best, kin_scores, cut), requester_records)

    cut = _start(chosen, sure_from)
    sure = sure_from(cut)
    for _ in range(ITERATIONS):
        if sure is None or sure >= cut:
            break
        following = sure_from(sure)
        if following is None:
            break  # the last cut at which the model could be fitted
        cut, sure = sure, following
    return _kept(candidates, best, kin_scores, cut), cut


def _start(chosen: CalibratedThreshold, sure_from: Callable[[float], float | None]) -> float:
    """The first cut: from the fallback threshold down by SEARCH_STEP to the lower bound, the
    highest at which the model is sure of everything set aside (it can be fitted, and its
    match probability reaches KIN_PROBABILITY at the cut); else the highest at which it can be
    fitted; else the fallback threshold."""
    fitted = None
    cut = chosen.fallback_threshold
    while cut >= chosen.bounds[0] - 1e-9:
        sure = sure_from(cut)
        if sure is not None and sure <= cut:
            return cut
        if sure is not None and fitted is None:
            fitted = cut
        cut = round(cut - SEARCH_STEP, 6)
    return chosen.fallback_threshold if fitted is None else fitted


def _sure_from(candidates: Candidates, requester_records: int) -> float | None:
    """The lowest score at which the match model of `candidates` gives a match probability of
    KIN_PROBABILITY (above 1: none); None if it cannot be fitted."""
    sim, rows0, rows1 = (
        candidates.similarities,
        candidates.requester_rows,
        candidates.custodian_rows,
    )
    solved = solve_one_to_one(sim, rows0, rows1)
    try:
        model = fit_match_model(
            RecordScores.after_solving(sim, rows0, rows1, solved, requester_records)
        )
    except ModelUnfit:
        return None
    return model.lowest_score(KIN_PROBABILITY)


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
