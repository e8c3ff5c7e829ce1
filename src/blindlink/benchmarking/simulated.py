"""Simulated runs: candidate scores drawn from known distributions, so that the match model can
be checked where the truth is exact. Unrelated records score N(0.5, 0.02) against each of the
custodian's records; a requester record's partner scores from a chosen draw."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from blindlink.benchmarking.quality import covered, in_truth, released_quality
from blindlink.matching.decision import decide
from blindlink.matching.engine import Candidates
from blindlink.matching.rules import CalibratedThreshold, DecisionRule, Target

ScoreDraw = Callable[[np.random.Generator, int], np.ndarray]
CANDIDATES = 4  # unrelated custodian records kept per requester record (its best ones)
# The rule simulated runs are decided by: towards the best estimated F*, with bounds from 0.5,
# wide enough for the overlapping partners' scores, and the unhardened fallback threshold.
RULE = DecisionRule(CalibratedThreshold(Target.BEST_F_STAR, (0.5, 0.95), 0.8))


def well_separated(rng: np.random.Generator, n: int) -> np.ndarray:
    """Partner scores far above the unrelated ones: 1 - 0.25 Beta(1, 6)."""
    return 1.0 - 0.25 * rng.beta(1.0, 6.0, n)


def overlapping(rng: np.random.Generator, n: int) -> np.ndarray:
    """Partner scores reaching down into the unrelated ones: N(0.66, 0.06)."""
    return np.clip(rng.normal(0.66, 0.06, n), 0.0, 1.0)


DRAWS: dict[str, ScoreDraw] = {"well separated": well_separated, "overlapping": overlapping}


def simulated_run(
    seed: int,
    records: int,
    matched: int,
    partner_score: ScoreDraw,
    others: int = 2000,
    partners_lower_by: float = 0.0,
) -> tuple[Candidates, set[tuple[int, int]]]:
    """Each requester record's CANDIDATES best unrelated custodian records (of `others`; Dice of
    unrelated records ~ N(0.5, 0.02), `partners_lower_by` lower for records with a partner),
    and the first `matched` records' partners."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0.5, 0.02, (records, others))
    scores[:matched] -= partners_lower_by
    scores = np.round(scores, 4)
    rows1 = np.argsort(-scores, axis=1)[:, :CANDIDATES]
    sims = np.take_along_axis(scores, rows1, axis=1)
    partners = rng.permutation(others)[:matched]
    truth = {(i, int(p)) for i, p in enumerate(partners)}
    true_scores = np.round(partner_score(rng, matched), 4)
    rows0 = np.repeat(np.arange(records), CANDIDATES)
    sim, r0, r1 = sims.ravel(), rows0, rows1.ravel()
    keep = ~in_truth(r0, r1, truth)
    sim = np.concatenate([sim[keep], true_scores])
    r0 = np.concatenate([r0[keep], np.arange(matched)])
    r1 = np.concatenate([r1[keep], partners])
    order = np.lexsort((r1, r0, -sim))
    return Candidates(sim[order], r0[order], r1[order], records * others, records * others), truth


def measure(seed: int, records: int, matched: int, draw: str) -> dict[str, Any]:
    """One simulated run decided by RULE: its threshold, estimates and true quality."""
    candidates, truth = simulated_run(seed, records, matched, DRAWS[draw])
    decisions = decide(candidates, records, RULE)
    estimated = None if decisions.estimates is None else decisions.estimates.to_dict()
    true = released_quality(decisions, truth)
    error = None if estimated is None else estimated["precision"] - true["precision"]
    return {
        "seed": seed,
        "records": records,
        "matched": matched,
        "draw": draw,
        "threshold": decisions.threshold,
        "note": decisions.note,
        "estimated": estimated,
        "true": true,
        "precision_error": error,
        "covered": covered(decisions.estimates, true),
    }
