"""`blindlink bench tradeoff --quick`: the files it writes exist and hold plausible numbers."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import pytest

from blindlink.benchmarking.figures import FIGURES
from blindlink.cli.bench_commands import add_bench_commands


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tradeoff")
    parser = argparse.ArgumentParser()
    add_bench_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "tradeoff", "--quick", "--out", str(directory)])
    assert args.run(args) == 0
    return directory


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
