"""Linkage quality against ground truth, for demos and benchmarks."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Quality:
    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        released = self.true_positives + self.false_positives
        return self.true_positives / released if released else 1.0

    @property
    def recall(self) -> float:
        actual = self.true_positives + self.false_negatives
        return self.true_positives / actual if actual else 1.0

    @property
    def f_star(self) -> float:
        """TP / (TP + FP + FN)."""
        counted = self.true_positives + self.false_positives + self.false_negatives
        return self.true_positives / counted if counted else 1.0

    def to_dict(self) -> dict[str, float]:
        return {"precision": self.precision, "recall": self.recall, "f_star": self.f_star}


def read_truth(path: Path) -> list[tuple[str, str]]:
    """(requester ID, custodian ID) pairs from a truth file."""
    with open(path, newline="", encoding="utf-8") as f:
        return [(row["requester_id"], row["custodian_id"]) for row in csv.DictReader(f)]


def membership_quality(released_ids: set[str], true_ids: set[str]) -> Quality:
    """Quality of a release of one party's own matched IDs: is each released ID really shared?"""
    tp = len(released_ids & true_ids)
    return Quality(tp, len(released_ids) - tp, len(true_ids) - tp)


def pair_quality(released_pairs: set[tuple[str, str]], true_pairs: set[tuple[str, str]]) -> Quality:
    """Quality of a released pair list against the true pairs."""
    tp = len(released_pairs & true_pairs)
    return Quality(tp, len(released_pairs) - tp, len(true_pairs) - tp)
