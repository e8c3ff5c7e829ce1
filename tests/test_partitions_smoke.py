"""`benchmarks/partitions.py` on a small custodian: the batches decided on a Dask cluster's
partitions are decided exactly as against the whole index, and the results file says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("dask.distributed")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "partitions.py"


def test_partitioned_batches_decide_as_the_whole_index(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--records", "20000", "--parts", "2"]
    command += ["--workdir", str(tmp_path / "data"), "--out", str(tmp_path)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    document = json.loads((tmp_path / "partitions.json").read_text())
    assert document["records"] == 20_000 and len(document["partitions"]) == 2
    held = sum(p["records"] for p in document["partitions"])
    assert held == pytest.approx(document["replication"] * 20_000)
    assert 20_000 <= held <= 2 * 20_000
    batches = document["cluster"]["batches"]
    assert set(batches) == {"1000", "10000"}
    assert all(found["identical"] for found in batches.values()), batches
