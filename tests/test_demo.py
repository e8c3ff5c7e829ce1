"""`blindlink demo` end to end: a server process, two party processes, scored releases."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("blocking", "compared"), [("auto", "all pairs"), ("keys", "blocking keys")]
)
def test_demo_json_summary(tmp_path: Path, blocking: str, compared: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "blindlink",
            "demo",
            "--records",
            "3000",
            "--blocking",
            blocking,
            "--json",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["records_per_party"] == 3000
    assert summary["blocking"] == compared
    assert summary["true_matches"] == 1500
    assert summary["precision"] >= 0.97
    assert summary["recall"] >= 0.88
    # The custodian's agreed release is the count; it equals what the requester got.
    assert summary["released_custodian"] == summary["released_requester"]
    assert set(summary["seconds"]) >= {"generate", "encode", "upload", "match", "release", "total"}
    # Each party's results stayed with that party and hold only what it was granted.
    assert (tmp_path / "custodian" / "matches.csv").read_text().splitlines()[0] == "match_count"
    requester_ids = (tmp_path / "requester" / "matches.csv").read_text().splitlines()
    assert requester_ids[0] == "id" and len(requester_ids) == summary["released_requester"] + 1
    assert not (tmp_path / "server" / "server.log").read_text().count("Traceback")
    # The run was under a signed agreement and its audit log verified at the end.
    assert len(summary["agreement_sha256"]) == 64
    assert summary["audit_entries_verified"] >= 8
