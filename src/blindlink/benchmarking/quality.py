"""Linkage quality of a run's decisions against the ground truth: of its released matches, and
over a range of thresholds.

Greedy 1:1 matching takes candidates in decreasing similarity, so the matches it makes at a
threshold t are exactly the matches at or above t of one solve at a lower floor: one solve
gives the whole precision-recall curve.
"""

from __future__ import annotations

import itertools
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import numpy as np

from blindlink.matching.decision import ESTIMATED, Decisions, Estimates, PairStatus, link
from blindlink.matching.engine import SharedEncodings
from blindlink.matching.executors import SerialExecutor
from blindlink.matching.rules import DecisionRule, FixedThreshold

FLOOR = 0.5
THRESHOLDS = np.round(np.arange(FLOOR, 1.0, 0.01), 2)
# The lower edges of the bands of match probability in which a run's released matches are
# compared with the truth (the last band reaches 1).
PROBABILITY_BANDS = (0.0, 0.5, 0.9, 0.99)


@dataclass(frozen=True)
class QualityCurve:
    """Counts of true and false positives per threshold, and the number of true pairs."""

    thresholds: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray
    true_pairs: int

    @property
    def precision(self) -> np.ndarray:
        released = self.true_positives + self.false_positives
        return np.divide(
            self.true_positives, released, out=np.ones(len(released)), where=released > 0
        )

    @property
    def recall(self) -> np.ndarray:
        return (
            self.true_positives / self.true_pairs
            if self.true_pairs
            else np.ones(len(self.thresholds))
        )

    @property
    def f_star(self) -> np.ndarray:
        """TP / (TP + FP + FN) (Hand, Christen and Kirielle 2021)."""
        denominator = self.false_positives + self.true_pairs
        return np.divide(
            self.true_positives,
            denominator,
            out=np.zeros(len(self.thresholds)),
            where=denominator > 0,
        )

    def at(self, threshold: float) -> dict[str, float]:
        """Precision, recall and F* at the highest grid threshold not above `threshold`."""
        i = max(0, int(np.searchsorted(self.thresholds, threshold + 1e-9)) - 1)
        return {
            "threshold": float(self.thresholds[i]),
            "precision": float(self.precision[i]),
            "recall": float(self.recall[i]),
            "f_star": float(self.f_star[i]),
        }

    def best_threshold(self) -> float:
        return float(self.thresholds[int(np.argmax(self.f_star))])


def quality_curve(
    requester: np.ndarray, custodian: np.ndarray, truth: set[tuple[int, int]]
) -> QualityCurve:
    """Match packed uint8 encodings with blindlink's decision pipeline and score every
    threshold."""
    decisions = link(
        SharedEncodings.of(requester, custodian),
        DecisionRule(FixedThreshold(FLOOR)),
        SerialExecutor(),
        workers=1,
    )
    return curve_of(decisions, truth)


def curve_of(decisions: Decisions, truth: set[tuple[int, int]]) -> QualityCurve:
    """True and false positives per threshold of a run's solved pairs, every one of which is
    at or above the lowest threshold of the curve."""
    return curve_from(_right(decisions, truth), decisions.similarities, partners(truth))


def curve_from(right: np.ndarray, similarity: np.ndarray, true_pairs: int) -> QualityCurve:
    """True and false positives per threshold of solved pairs with these `similarity` scores,
    of which those marked `right` are true pairs, when `true_pairs` records have a partner."""
    tp = np.array([(right & (similarity >= t)).sum() for t in THRESHOLDS])
    fp = np.array([(~right & (similarity >= t)).sum() for t in THRESHOLDS])
    return QualityCurve(THRESHOLDS, tp, fp, true_pairs)


def released_quality(decisions: Decisions, truth: set[tuple[int, int]]) -> dict[str, float]:
    """True precision, recall and F* of a run's released matches."""
    right = released_right(decisions, truth)
    count = decisions.count(PairStatus.MATCH)
    with_partner = partners(truth)
    return {
        "precision": right / count if count else 1.0,
        "recall": right / with_partner if truth else 1.0,
        "f_star": right / (count + with_partner - right) if count + with_partner else 1.0,
    }


def reliability(decisions: Decisions, truth: set[tuple[int, int]]) -> list[dict[str, Any]]:
    """Per band of match probability (PROBABILITY_BANDS): how many released matches lie in it,
    how many of them the model expects to be true (their probabilities' sum) and how many are.
    A model whose pairs of probability 0.7 are true 7 times in 10 is calibrated. Empty where
    no model was fitted (the run has no estimates)."""
    if decisions.estimates is None:
        return []
    released = decisions.status == PairStatus.MATCH
    probability = decisions.probabilities[released]
    right = _right(decisions, truth)[released]
    edges = (*PROBABILITY_BANDS, np.inf)
    bands = []
    for low, high in itertools.pairwise(edges):
        inside = (probability >= low) & (probability < high)
        bands.append(
            {
                "band": [low, min(high, 1.0)],
                "released": int(inside.sum()),
                "expected_true": float(probability[inside].sum()),
                "true": int(right[inside].sum()),
            }
        )
    return bands


def partners(truth: AbstractSet[tuple[object, object]]) -> int:
    """The requester records with a true partner: recall's denominator, as 1:1 solving
    releases at most one pair per record, whichever of a person's records the custodian holds
    it pairs with."""
    return len({requester for requester, _ in truth})


def released_right(decisions: Decisions, truth: set[tuple[int, int]]) -> int:
    """How many of a run's released matches are `truth` pairs."""
    return int((_right(decisions, truth) & (decisions.status == PairStatus.MATCH)).sum())


def covered(estimates: Estimates | None, true: dict[str, float]) -> dict[str, bool | None]:
    """Per estimate (ESTIMATED), whether its interval holds the `true` value; None where it has
    no interval."""
    intervals = {
        name: None if estimates is None else estimates.interval(name) for name in ESTIMATED
    }
    return {
        name: None if interval is None else bool(interval[0] <= true[name] <= interval[1])
        for name, interval in intervals.items()
    }


def in_truth(
    requester_rows: np.ndarray, custodian_rows: np.ndarray, truth: set[tuple[int, int]]
) -> np.ndarray:
    """Per pair of rows (requester_rows[i], custodian_rows[i]), whether it is a `truth` pair."""
    if not truth or not len(requester_rows):
        return np.zeros(len(requester_rows), dtype=bool)
    pairs = np.array(list(truth), dtype=np.int64)
    width = max(int(custodian_rows.max()), int(pairs[:, 1].max())) + 1
    keys = requester_rows.astype(np.int64) * width + custodian_rows
    return np.isin(keys, pairs[:, 0] * width + pairs[:, 1])


def _right(decisions: Decisions, truth: set[tuple[int, int]]) -> np.ndarray:
    return in_truth(decisions.requester_rows, decisions.custodian_rows, truth)
