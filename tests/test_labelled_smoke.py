"""`benchmarks/labelled.py`: labelled files linked as `bl.link` links them, with the truth from
a truth file or from IDs both sides share; the results file holds numbers that agree with the
files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from blindlink.benchmarking.labelled import same_ids
from blindlink.encoding.schema import default_schema_path
from blindlink.errors import InputError
from blindlink.synthetic import GeneratedFiles, generate_datasets

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "labelled.py"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> GeneratedFiles:
    """400 generated people per party, half of them on both sides."""
    return generate_datasets(tmp_path_factory.mktemp("data"), 400, 0.5, seed=3)


@pytest.fixture(scope="module")
def document(files: GeneratedFiles, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("results")
    command = [
        sys.executable,
        str(SCRIPT),
        str(files.requester),
        str(files.custodian),
        "--schema",
        str(default_schema_path()),
        "--truth",
        str(files.truth),
        "--secrets",
        "1",
        "--name",
        "generated",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("secret 0: threshold") == 2
    return dict(json.loads((out / "labelled-generated.json").read_text(encoding="utf-8")))


def test_each_linkage_is_measured_against_the_truth_file(document: dict[str, Any]) -> None:
    assert document["benchmark"] == "labelled-generated"
    assert document["files"]["truth"] == "truth.csv"
    assert [(x["hardened"], x["secret"]) for x in document["linkages"]] == [(False, 0), (True, 0)]
    for linkage in document["linkages"]:
        assert linkage["records"] == [400, 400] and linkage["true_pairs"] == 200
        calibrated, oracle = linkage["calibrated"], linkage["oracle"]
        assert calibrated["rule"].startswith("calibrated")
        true, estimated = calibrated["true"], calibrated["estimated"]
        right = round(true["precision"] * calibrated["released"])
        assert true["recall"] == pytest.approx(right / 200)
        assert true["f_star"] == pytest.approx(right / (calibrated["released"] + 200 - right))
        assert true["precision"] > 0.95 and true["recall"] > 0.85
        assert abs(estimated["precision"] - true["precision"]) < 0.05
        # The best fixed threshold is chosen with the truth: the calibrated one is not better
        # by more than the grid's step can explain.
        assert oracle["f_star"] >= true["f_star"] - 0.02
        assert 0.5 <= oracle["threshold"] < 1.0


def test_without_a_truth_file_records_with_the_same_id_on_both_sides_are_pairs(
    tmp_path: Path,
) -> None:
    for name, ids in (("a.csv", ["1", "2", "3"]), ("b.csv", ["3", "4", "1"])):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["rec", "surname"])
            writer.writerows([i, "x"] for i in ids)
    pairs = same_ids(tmp_path / "a.csv", tmp_path / "b.csv", "rec")
    assert pairs == {("1", "1"), ("3", "3")}
    with pytest.raises(InputError, match=r"a\.csv.*no record ID column 'id'"):
        same_ids(tmp_path / "a.csv", tmp_path / "b.csv", "id")
