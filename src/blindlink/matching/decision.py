"""The one decision pipeline: candidates -> 1:1 solving -> match model -> threshold -> possible
match band -> ambiguity rule. The server, the demo, the benchmarks and the tests all decide
matches here.

A rule is a fixed threshold (as agreed), or a calibrated one: the match model, fitted to the
run's own scores, chooses the threshold within agreed bounds that meets the agreed target
(best estimated F*, or the lowest threshold whose estimated precision reaches a minimum). When
the model cannot be fitted, a calibrated rule falls back to its agreed fallback threshold and
the decision says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from blindlink.matching.blocking import Blocking
from blindlink.matching.engine import (
    DEFAULT_LIMITS,
    Candidates,
    MatchingLimits,
    SharedEncodings,
    find_candidates,
)
from blindlink.matching.executors import Executor
from blindlink.matching.linkage import ambiguous, solve_one_to_one
from blindlink.matching.match_model import (
    MatchModel,
    ModelUnfit,
    RecordScores,
    fit_match_model,
)
from blindlink.matching.rules import (
    STEP,
    DecisionRule,
    FixedThreshold,
    Target,
)

# Each requester record's best candidates that the model sees, whatever their score.
MODEL_CANDIDATES = 4


class PairStatus(IntEnum):
    """What became of a solved pair that a party may hear about."""

    MATCH = 0
    WITHHELD = 1  # a match withheld by the ambiguity rule
    POSSIBLE = 2  # in the possible-match band


@dataclass(frozen=True)
class Estimates:
    """The model's estimates for the released matches of a run."""

    precision: float
    recall: float
    f_star: float


@dataclass(frozen=True)
class Decisions:
    """Solved pairs that are matches, withheld matches or possible matches, and how the run
    decided: the threshold, the model's estimates (None when it could not be fitted) and a
    note saying which rule applied."""

    requester_rows: np.ndarray
    custodian_rows: np.ndarray
    similarities: np.ndarray
    probabilities: np.ndarray  # NaN where no model was fitted
    status: np.ndarray  # PairStatus values
    threshold: float
    estimates: Estimates | None
    note: str

    def count(self, status: PairStatus) -> int:
        return int((self.status == status).sum())

    def summary(self) -> DecisionSummary:
        return DecisionSummary(
            round(self.threshold, 6),
            self.note,
            self.count(PairStatus.MATCH),
            self.count(PairStatus.WITHHELD),
            self.count(PairStatus.POSSIBLE),
            self.estimates,
        )


@dataclass(frozen=True)
class DecisionSummary:
    """How a run decided, in aggregates only: what its audit entry records and what a party
    whose counts are visible may see."""

    threshold: float
    rule: str
    matches: int
    withheld: int
    possible: int
    estimates: Estimates | None

    def to_dict(self) -> dict[str, Any]:
        estimates = self.estimates
        return {
            "threshold": self.threshold,
            "rule": self.rule,
            "matches": self.matches,
            "withheld": self.withheld,
            "possible": self.possible,
            "estimates": None
            if estimates is None
            else {k: round(v, 4) for k, v in vars(estimates).items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecisionSummary:
        estimates = data["estimates"]
        return cls(
            data["threshold"],
            data["rule"],
            data["matches"],
            data["withheld"],
            data["possible"],
            None if estimates is None else Estimates(**estimates),
        )


Progress = Callable[[int, int], None]


def link(
    shared: SharedEncodings,
    rule: DecisionRule,
    executor: Executor,
    workers: int,
    blocking: Blocking | None = None,
    limits: MatchingLimits = DEFAULT_LIMITS,
    progress: Progress = lambda done, total: None,
) -> Decisions:
    """Candidates for the rule, then decisions."""
    candidates = find_candidates(
        shared,
        rule.candidate_threshold,
        executor,
        workers,
        blocking,
        limits,
        progress,
        best=MODEL_CANDIDATES,
    )
    return decide(candidates, len(shared.requester), rule)


def decide(candidates: Candidates, requester_records: int, rule: DecisionRule) -> Decisions:
    """Solve 1:1, fit the model, choose the threshold, apply the band and the ambiguity rule."""
    sim, rows0, rows1 = (
        candidates.similarities,
        candidates.requester_rows,
        candidates.custodian_rows,
    )
    solved = solve_one_to_one(sim, rows0, rows1)
    model: MatchModel | None
    try:
        model = fit_match_model(RecordScores.of(sim, rows0, requester_records))
        unfit = ""
    except ModelUnfit as reason:
        model, unfit = None, str(reason)
    probabilities = (
        model.probability(solved.similarities)
        if model is not None
        else np.full(len(solved), np.nan)
    )
    threshold, note = _threshold(rule, solved.similarities, probabilities, model, unfit)
    matched = solved.similarities >= threshold
    possible = np.zeros(len(solved), dtype=bool)
    if rule.possible_band is not None and model is not None:
        low, high = rule.possible_band
        possible = (probabilities >= low) & ~(matched & (probabilities >= high))
        matched &= probabilities >= high
    # Rivals are the candidates at or above the run's threshold, as with a fixed threshold.
    rivals = sim >= threshold
    withheld = np.zeros(len(solved), dtype=bool)
    withheld[matched] = ambiguous(
        sim[rivals], rows0[rivals], rows1[rivals], solved.subset(matched), rule.ambiguity_margin
    )
    status = np.full(len(solved), -1, dtype=np.int8)
    status[possible] = PairStatus.POSSIBLE
    status[matched] = PairStatus.MATCH
    status[withheld] = PairStatus.WITHHELD
    released = status == PairStatus.MATCH
    estimates = (
        None if model is None else _estimates(probabilities[released], model.matched_records)
    )
    keep = status >= 0
    return Decisions(
        solved.requester_rows[keep],
        solved.custodian_rows[keep],
        solved.similarities[keep],
        probabilities[keep],
        status[keep],
        threshold,
        estimates,
        note,
    )


def _threshold(
    rule: DecisionRule,
    similarities: np.ndarray,
    probabilities: np.ndarray,
    model: MatchModel | None,
    unfit: str,
) -> tuple[float, str]:
    """The run's threshold and a note on how it was chosen."""
    chosen = rule.threshold
    if isinstance(chosen, FixedThreshold):
        note = "fixed threshold" + (f"; no estimates: {unfit}" if model is None else "")
        return chosen.threshold, note
    if model is None:
        return chosen.fallback_threshold, f"fallback threshold: {unfit}"
    low, high = chosen.bounds
    grid = np.round(np.arange(low, high + STEP / 2, STEP), 6)
    order = np.argsort(-similarities, kind="stable")
    ranked, expected = similarities[order], np.cumsum(probabilities[order])
    released = np.searchsorted(-ranked, -grid, side="right")
    true = np.where(released > 0, expected[np.maximum(released - 1, 0)], 0.0)
    precision = np.divide(true, released, out=np.ones(len(grid)), where=released > 0)
    matched = model.matched_records
    if chosen.target is Target.MIN_PRECISION:
        meets = np.flatnonzero(precision >= chosen.min_precision)
        if not len(meets):
            return float(high), (
                f"calibrated: no threshold within the bounds reaches estimated precision "
                f"{chosen.min_precision}; the upper bound applies"
            )
        return float(grid[meets[0]]), f"calibrated: estimated precision >= {chosen.min_precision}"
    f_star = true / np.maximum(released + matched - true, 1e-12)
    # Thresholds that release the same pairs tie; the middle of the best run of them lies
    # furthest from the scores on either side.
    best = np.flatnonzero(f_star >= f_star.max() - 1e-12)
    same = best[released[best] == released[best[0]]]
    return float(grid[same[len(same) // 2]]), "calibrated: best estimated F*"


def _estimates(probabilities: np.ndarray, matched_records: float) -> Estimates:
    released = len(probabilities)
    true = float(probabilities.sum())
    precision = true / released if released else 1.0
    recall = min(true / matched_records, 1.0) if matched_records > 0 else 1.0
    denominator = released + matched_records - true
    return Estimates(precision, recall, true / denominator if denominator > 0 else 1.0)
