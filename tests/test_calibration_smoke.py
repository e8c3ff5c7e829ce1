"""`benchmarks/calibration.py --quick`: the results file says what was measured and how, and
its numbers are plausible."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blindlink.benchmarking import calibration as cal
from blindlink.matching.decision import Decisions, Estimates, PairStatus
from blindlink.matching.engine import Candidates

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "calibration.py"


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("calibration")
    command = [sys.executable, str(SCRIPT), "--quick", "--workdir", str(work), "--out", str(work)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
    return work


@pytest.fixture(scope="module")
def document(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "calibration.json").read_text(encoding="utf-8")))


def test_the_json_says_how_and_where_it_was_measured(document: dict[str, Any]) -> None:
    assert document["benchmark"] == "calibration"
    assert document["quick"] is True
    assert document["machine"]["cores"] >= 1
    assert "FixedThreshold(0.5)" in document["how"]
    assert set(document["targets"]) == {"f_star", "precision", "recall", "hardening"}
    (invocation,) = document["invocations"]
    assert "--quick" in invocation["argv"]
    assert invocation["wall_seconds"] > 0


def test_every_case_has_its_numbers(document: dict[str, Any]) -> None:
    cases = document["cases"]
    assert {c["hardened"] for c in cases} == {False, True}
    assert {c["blocking"] for c in cases} == {"all pairs", "keys"}
    for case in cases:
        calibrated, oracle = case["calibrated"], case["oracle"]
        assert 0 <= calibrated["threshold"] <= 1, case["name"]  # Dice or match probability
        assert calibrated["note"]
        for quality in (calibrated["true"], calibrated["estimated"], oracle):
            assert quality is not None, case["name"]
            for key in ("precision", "recall", "f_star"):
                assert 0 <= quality[key] <= 1, (case["name"], key)
        assert 0.5 <= oracle["threshold"] <= 0.99
        assert case["gaps"]["f_star"] == pytest.approx(
            calibrated["true"]["f_star"] - oracle["f_star"]
        )
        assert set(case["met"]) == {"f_star", "precision", "recall"}
        assert all(seconds >= 0 for seconds in case["seconds"].values())
        assert 0 < case["pair_completeness"] <= 1
        unseen = case["partners_unseen"]
        assert 0 <= unseen["not_candidates"] + unseen["below_a_non_match"] <= 1
        chance = case["precision_by_chance"]
        assert chance["sd"] >= 0 and 0 <= chance["within"] <= 1, case["name"]


def test_generated_all_pairs_links_well(document: dict[str, Any]) -> None:
    for case in document["cases"]:
        if case["dataset"] == "generated" and case["blocking"] == "all pairs":
            assert case["calibrated"]["true"]["f_star"] > 0.9, case["name"]
            assert case["oracle"]["f_star"] > 0.9, case["name"]


def test_summary_counts_every_case_and_data_set(document: dict[str, Any]) -> None:
    cases, summary = document["cases"], document["summary"]
    for target in ("f_star", "precision", "recall"):
        assert summary[target]["of"] == len(cases)
        met = sum(case["met"][target] for case in cases)
        assert summary[target]["met"] == met
    assert summary["hardening"]["of"] == len(document["hardening_gaps"]) == len(cases) // 2
    assert summary["all_met"] == all(
        not summary[t]["missed"] for t in ("f_star", "precision", "recall", "hardening")
    )
    chance = summary["precision_by_chance"]
    within = [c["precision_by_chance"]["within"] for c in cases]
    assert chance["fitted"] == len(cases)
    assert chance["expected_met"] == pytest.approx(sum(within))
    assert chance["all_met"] == pytest.approx(float(np.prod(within)))
    misses = summary["recall_misses"]
    assert misses["too_high"] + misses["too_low"] == len(summary["recall"]["missed"])
    assert 0 <= misses["too_high_with_partners_unseen"] <= misses["too_high"]
    for name in ("without_partners", "few_partners"):
        sparse = summary["sparse_runs"][name]
        assert sparse["modelled"] == [c["name"] for c in cases if c[name]["modelled"]]
        assert sparse["released"] == sum(c[name]["released"] for c in cases)


def test_the_runs_without_their_partners_are_refused(document: dict[str, Any]) -> None:
    """Each case's candidates without the true pairs, decided by the same rule: nothing
    there is a match, so the model refuses, the fallback threshold says so, and it releases
    no more than the agreed fallback alone would."""
    for case in document["cases"]:
        nobody = case["without_partners"]
        assert not nobody["modelled"], case["name"]
        assert nobody["note"].startswith("fallback threshold: "), case["name"]
        assert nobody["true_released"] == 0
        assert nobody["released"] <= nobody["agreed_fallback"]["released"]


def test_runs_with_a_few_partners_keep_them_among_what_they_release(
    document: dict[str, Any],
) -> None:
    for case in document["cases"]:
        few = case["few_partners"]
        assert few["partners"] == min(30, case["true_pairs"])
        assert 0 <= few["true_released"] <= min(few["released"], few["partners"])


def test_the_plot_is_written(out: Path) -> None:
    assert (out / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reliability_bands_hold_every_released_match_of_a_fitted_run(
    document: dict[str, Any],
) -> None:
    pooled: dict[str, int] = {"all pairs": 0, "keys": 0}
    for case in document["cases"]:
        bands = case["reliability"]
        calibrated = case["calibrated"]
        if calibrated["estimated"] is None:
            assert bands == [], case["name"]
            continue
        assert sum(band["released"] for band in bands) == calibrated["released"]
        for band in bands:
            low, high = band["band"]
            assert low * band["released"] <= band["expected_true"] <= high * band["released"]
            assert 0 <= band["true"] <= band["released"]
        pooled[case["blocking"]] += calibrated["released"]
    for blocking, released in pooled.items():
        summary = document["summary"]["reliability"][blocking]
        assert sum(band["released"] for band in summary) == released


def test_partners_unseen_counts_records_whose_partner_no_score_shows() -> None:
    """Record 0's partner is its best candidate; record 1's scores below a non-match; record
    2's is not among its candidates; record 3's was never compared (a quarter of them)."""
    found = Candidates(
        np.array([0.9, 0.8, 0.7, 0.6, 0.5]),
        np.array([0, 1, 1, 2, 0]),
        np.array([10, 12, 11, 13, 14]),
        comparisons=5,
        all_pairs=20,
    )
    truth = {(0, 10), (1, 11), (2, 20), (3, 30)}
    unseen = cal.partners_unseen(found, truth, compared=0.75)
    assert unseen == pytest.approx({"not_candidates": 0.25, "below_a_non_match": 0.25})
    nobody = cal.partners_unseen(found, set(), 1.0)
    assert nobody == {"not_candidates": 0.0, "below_a_non_match": 0.0}


def _released_at(probabilities: np.ndarray, estimates: Estimates | None) -> Decisions:
    """Decisions releasing one pair per probability."""
    rows = np.arange(len(probabilities))
    status = np.full(len(rows), PairStatus.MATCH, dtype=np.int8)
    return Decisions(rows, rows, probabilities, probabilities, status, 0.8, estimates, "test")


def test_precision_by_chance_is_the_spread_of_the_released_matches_true_count() -> None:
    """100 released pairs each true with probability 0.903: the true count is binomial, and
    the share of its outcomes within 0.01 of the expected precision (90.3 +- 1 true pairs, so
    90 or 91) is what the normal approximation gives."""
    estimates = Estimates(0.903, 0.9, 0.85)
    chance = cal.precision_by_chance(_released_at(np.full(100, 0.903), estimates))
    assert chance is not None
    assert chance["sd"] == pytest.approx(math.sqrt(0.903 * 0.097 / 100))
    exact = sum(math.comb(100, k) * 0.903**k * 0.097 ** (100 - k) for k in (90, 91))
    assert chance["within"] == pytest.approx(exact, abs=0.02)
    assert cal.precision_by_chance(_released_at(np.ones(50), estimates)) == {
        "sd": 0.0,
        "within": 1.0,
    }
    assert cal.precision_by_chance(_released_at(np.full(100, 0.903), None)) is None


def test_cached_candidates_are_read_back_only_for_the_same_generation(tmp_path: Path) -> None:
    case = cal.Case("generated", 1000, 0.5, "default", False, False)
    rule = cal.calibrated_rule(False)
    made = Candidates(np.array([0.9, 0.4]), np.array([0, 1]), np.array([3, 2]), 4, 9)
    generated: list[int] = []

    def generate() -> Candidates:
        generated.append(1)
        return made

    assert cal.cached_candidates(case, rule, generate, None) == (made, False)
    first, reused = cal.cached_candidates(case, rule, generate, tmp_path)
    assert not reused and first is made
    again, reused = cal.cached_candidates(case, rule, generate, tmp_path)
    assert reused and len(generated) == 2
    for name in ("similarities", "requester_rows", "custodian_rows"):
        assert np.array_equal(getattr(again, name), getattr(made, name))
    assert (again.comparisons, again.all_pairs) == (4, 9)
    other = cal.Case("generated", 1000, 0.5, "default", False, True)  # hardened: another case
    assert cal.cached_candidates(other, rule, generate, tmp_path)[1] is False
    assert len(list(tmp_path.glob("*.npz"))) == 2
