"""`benchmarks/simulated.py`: simulated runs decided by the calibrated rule; the results file's
group counts agree with its runs and with the truth of each run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from blindlink.benchmarking.simulated import overlapping, simulated_run

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "simulated.py"


def test_the_results_agree_with_their_runs(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--seeds", "2", "--matched", "800", "--out"]
    subprocess.run([*command, str(tmp_path)], check=True, capture_output=True, text=True)
    document = json.loads((tmp_path / "simulated.json").read_text())
    runs, groups = document["runs"], document["groups"]
    assert len(runs) == 4 and [g["draw"] for g in groups] == ["well separated", "overlapping"]
    for group in groups:
        fitted = group["fitted"]
        counted = (
            group["precision_within"]
            + group["precision_overstated"]
            + group["precision_understated"]
        )
        assert group["runs"] == 2 and counted == fitted
    for run in runs:
        assert 0.5 <= run["threshold"] <= 0.95
        if run["estimated"] is not None:
            error = run["estimated"]["precision"] - run["true"]["precision"]
            assert run["precision_error"] == error


def test_a_simulated_run_has_its_partners_among_the_candidates() -> None:
    candidates, truth = simulated_run(1, 300, 100, overlapping)
    pairs = set(
        zip(candidates.requester_rows.tolist(), candidates.custodian_rows.tolist(), strict=True)
    )
    assert len(truth) == 100 and truth <= pairs
    assert len({r for r, _ in truth}) == 100
