"""Linkage quality of encodings against the ground truth, over a range of thresholds.

Greedy 1:1 matching takes candidates in decreasing similarity, so the matches it makes at a
threshold t are exactly the matches at or above t of one solve at a lower floor: one solve
gives the whole precision-recall curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blindlink.matching.engine import SharedEncodings, find_candidates
from blindlink.matching.executors import SerialExecutor
from blindlink.matching.linkage import solve_one_to_one

FLOOR = 0.5
THRESHOLDS = np.round(np.arange(FLOOR, 1.0, 0.01), 2)


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
    """Match packed uint8 encodings with blindlink's matcher and score every threshold."""
    candidates = find_candidates(
        SharedEncodings.of(requester, custodian), FLOOR, SerialExecutor(), workers=1
    )
    matches = solve_one_to_one(
        candidates.similarities, candidates.requester_rows, candidates.custodian_rows
    )
    pairs = zip(matches.requester_rows.tolist(), matches.custodian_rows.tolist(), strict=True)
    right = np.array([pair in truth for pair in pairs], dtype=bool)
    similarity = matches.similarities
    tp = np.array([(right & (similarity >= t)).sum() for t in THRESHOLDS])
    fp = np.array([(~right & (similarity >= t)).sum() for t in THRESHOLDS])
    return QualityCurve(THRESHOLDS, tp, fp, len(truth))
