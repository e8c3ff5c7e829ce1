"""`bl.tradeoff(quick=True)`, which `blindlink bench tradeoff --quick` runs: the files it writes
exist and hold plausible numbers, and the result object says the same."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

import blindlink as bl
from blindlink.benchmarking import tradeoff
from blindlink.benchmarking.figures import FIGURES
from blindlink.cli.main import main

SECRET_SEED = 20261203


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> bl.TradeoffResult:
    # One repeat with a fixed secret: with fresh ones, about 1 in 12 secrets leaves the
    # pattern-mining attack near chance on the baseline, and the test would fail by luck.
    return bl.tradeoff(tmp_path_factory.mktemp("tradeoff"), quick=True, secret_seed=SECRET_SEED)


@pytest.fixture(scope="module")
def out(result: bl.TradeoffResult) -> Path:
    return result.out


@pytest.fixture(scope="module")
def document(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "tradeoff.json").read_text(encoding="utf-8")))


def summary(document: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in document["summaries"] if s["name"] == name)


def seeded_rate(s: dict[str, Any], overlap: float, seeds: int) -> float:
    point = next(p for p in s["seeded"] if (p["overlap"], p["seeds"]) == (overlap, seeds))
    return float(point["reidentification_rate"]["median"])


def test_every_output_file_is_written(out: Path) -> None:
    for name in ("tradeoff.json", "tradeoff.csv", "tradeoff.md", *FIGURES.values()):
        assert (out / name).stat().st_size > 1000, name
    for png in FIGURES.values():
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_json_says_how_it_was_measured(document: dict[str, Any]) -> None:
    assert document["benchmark"] == "tradeoff"
    assert document["machine"]["cores"] >= 1
    assert document["machine"]["platform"]
    assert 0 < document["wall_seconds"] < 120
    assert document["method"]["sizes"]["repeats"] == 1
    assert f"derived from seed {SECRET_SEED}" in document["method"]["repeats"]
    assert {r["config"] for r in document["results"]} == {c["name"] for c in document["configs"]}
    assert all(r["seconds"]["total"] > 0 for r in document["results"])


def test_baseline_is_reidentified_and_hardening_helps(document: dict[str, Any]) -> None:
    baseline = summary(document, "baseline")
    assert seeded_rate(baseline, 1.0, 50) > 0.5
    assert seeded_rate(baseline, 1.0, 0) == 0.0  # no seeds: the attack cannot start
    mining = baseline["pattern_mining"]
    assert mining["reidentification_rate"]["median"] > 2 * mining["chance_rate"]
    diffused = summary(document, "diffusion t=4")
    assert diffused["worst_reidentification"] < baseline["worst_reidentification"] / 5


def test_linkage_numbers_are_plausible(document: dict[str, Any]) -> None:
    for s in document["summaries"]:
        for setting in ("policy", "calibrated"):
            numbers = s["generated"][setting]
            for key in ("precision", "recall", "f_star"):
                assert 0 <= numbers[key]["median"] <= 1, (s["name"], setting, key)
            assert numbers["f_star"]["median"] <= min(
                numbers["precision"]["median"], numbers["recall"]["median"]
            )
    assert summary(document, "baseline")["generated"]["calibrated"]["f_star"]["median"] > 0.9


def test_pareto_set_and_recommendation(document: dict[str, Any], out: Path) -> None:
    pareto = [s["name"] for s in document["summaries"] if s["pareto"]]
    assert pareto
    assert document["recommended"] in {s["name"] for s in document["summaries"]}
    report = (out / "tradeoff.md").read_text(encoding="utf-8")
    assert "## The unhardened clkhash baseline" in report
    assert f"Recommended default: {document['recommended']}" in report


def test_csv_has_one_row_per_configuration(document: dict[str, Any], out: Path) -> None:
    with (out / "tradeoff.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["config"] for r in rows] == [c["name"] for c in document["configs"]]
    assert all(0 <= float(r["worst_reid"]) <= 1 for r in rows)


def test_the_result_object_holds_what_the_json_holds(
    result: bl.TradeoffResult, document: dict[str, Any]
) -> None:
    names = [c.name for c in result.configurations]
    assert names == [s["name"] for s in document["summaries"]]
    assert result.recommended == document["recommended"]
    assert result.recommended_meets_target == document["recommended_meets_target"]
    baseline = result.configurations[names.index("baseline")]
    assert (
        baseline.f_star
        == summary(document, "baseline")["generated"]["calibrated"]["f_star"]["median"]
    )
    frame = result.to_pandas()
    assert list(frame["name"]) == names
    assert frame["pareto"].any()


def test_the_command_prints_the_result(
    result: bl.TradeoffResult,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`blindlink bench tradeoff` prints the API's result (here the one already measured)."""
    monkeypatch.setattr(tradeoff, "tradeoff_benchmark", lambda out, quick, progress: result)
    assert main(["bench", "tradeoff", "--quick", "--out", str(result.out)]) == 0
    printed = capsys.readouterr().out
    for c in result.configurations:
        assert f"{c.name:<34} F* {c.f_star:.3f}" in printed


def test_secrets_are_fresh_or_derived_from_the_seed() -> None:
    """Without a seed every task draws a fresh secret; with one, each task's secret is the same
    from run to run and differs from the other tasks'."""
    assert tradeoff._secret(None, 0) != tradeoff._secret(None, 0)
    assert tradeoff._secret(7, 0) == tradeoff._secret(7, 0)
    assert len({tradeoff._secret(7, task) for task in range(10)} | {tradeoff._secret(8, 0)}) == 11
    assert len(tradeoff._secret(7, 0)) == 32
