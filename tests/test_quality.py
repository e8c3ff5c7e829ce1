"""Benchmark measures of a run's decisions against the truth."""

from __future__ import annotations

import numpy as np

from blindlink.benchmarking.quality import covered, in_truth, reliability
from blindlink.matching.decision import Decisions, Estimates, PairStatus

FITTED = Estimates(0.9, 0.9, 0.8)


def _decisions(
    probabilities: list[float], status: list[PairStatus], estimates: Estimates | None = FITTED
) -> Decisions:
    rows = np.arange(len(probabilities))
    return Decisions(
        rows,
        rows,
        np.full(len(rows), 0.9),
        np.array(probabilities),
        np.array(status, dtype=np.int8),
        0.8,
        estimates,
        "calibrated on Dice: best estimated F*",
    )


def test_reliability_sets_each_released_match_in_its_band_of_match_probability() -> None:
    """Released matches only, each in the band of its probability; expected true is the
    probabilities' sum, true the matches that are truth pairs."""
    match, possible = PairStatus.MATCH, PairStatus.POSSIBLE
    decisions = _decisions(
        [0.6, 0.7, 0.95, 0.995, 1.0, 0.6],
        [match, match, match, match, match, possible],
    )
    truth = {(0, 0), (2, 2), (3, 3), (4, 4), (5, 5)}  # (1, 1) is wrong; 5 is not released
    bands = reliability(decisions, truth)
    assert [band["band"] for band in bands] == [[0.0, 0.5], [0.5, 0.9], [0.9, 0.99], [0.99, 1.0]]
    assert [band["released"] for band in bands] == [0, 2, 1, 2]
    assert [band["true"] for band in bands] == [0, 1, 1, 2]
    np.testing.assert_allclose([band["expected_true"] for band in bands], [0.0, 1.3, 0.95, 1.995])


def test_a_run_without_a_model_has_no_reliability() -> None:
    decisions = _decisions([float("nan")], [PairStatus.MATCH], None)
    assert reliability(decisions, {(0, 0)}) == []
    assert reliability(_decisions([], [], None), set()) == []  # none released either


def test_in_truth_marks_exactly_the_truth_pairs() -> None:
    rng = np.random.default_rng(3)
    requester, custodian = rng.integers(0, 50, 2000), rng.integers(0, 40, 2000)
    # Truth pairs with custodian rows beyond any candidate's, and one never a candidate.
    truth = {(int(r), int(c)) for r, c in zip(requester[:300], custodian[:300], strict=True)}
    truth |= {(1, 39_999), (49, 70)}
    expected = [(int(r), int(c)) in truth for r, c in zip(requester, custodian, strict=True)]
    assert in_truth(requester, custodian, truth).tolist() == expected
    assert not in_truth(requester, custodian, set()).any()
    assert in_truth(requester[:0], custodian[:0], truth).tolist() == []


def test_covered_says_per_estimate_whether_its_interval_holds_the_truth() -> None:
    estimates = Estimates(0.9, 0.8, 0.7, (0.88, 0.92), (0.75, 0.79), None)
    true = {"precision": 0.92, "recall": 0.8, "f_star": 0.7}
    assert covered(estimates, true) == {"precision": True, "recall": False, "f_star": None}
    assert covered(None, true) == {"precision": None, "recall": None, "f_star": None}
