"""The party workflow through the `blindlink` command line against a real server."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from clkhash import clk
from clkhash.serialization import serialize_bitarray

from blindlink.cli.main import main
from blindlink.encoding.schema import LinkageSchema, default_schema_path
from blindlink.evaluation import membership_quality, read_truth
from blindlink.synthetic import generate_datasets


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(list(args)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_encode_upload_watch_results(
    tmp_path: Path, address: str, schema: LinkageSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    files = generate_datasets(tmp_path / "data", 400, 0.5, seed=5)
    secret = tmp_path / "secret"
    run(capsys, "secret", "new", "--out", str(secret))
    run(
        capsys,
        "agreement",
        "new",
        "--reference",
        "cli test",
        "--requester",
        "A",
        "--custodian",
        "B",
        "--custodian-release",
        "own_rows",
        "--out",
        str(tmp_path / "agreement.json"),
    )
    project = run(
        capsys,
        "project",
        "create",
        "--server",
        address,
        "--party",
        "requester",
        "--agreement",
        str(tmp_path / "agreement.json"),
    ).strip()
    assert len(project) == 64

    # The requester uses blindlink's encoder...
    run(
        capsys,
        "encode",
        str(files.requester),
        "--secret-file",
        str(secret),
        "--out",
        str(tmp_path / "r.bin"),
        "--id-map",
        str(tmp_path / "r.json"),
    )
    run(
        capsys,
        "upload",
        "--server",
        address,
        "--party",
        "requester",
        "--project",
        project,
        str(tmp_path / "r.bin"),
    )
    # ...the custodian uploads clkhash's own JSON output, made with the same schema and secret.
    with open(files.custodian, encoding="utf-8") as f:
        clks = clk.generate_clk_from_csv(
            f, secret.read_bytes().strip(), schema.clkhash, progress_bar=False, max_workers=1
        )
    (tmp_path / "c.json").write_text(json.dumps({"clks": [serialize_bitarray(c) for c in clks]}))
    out = run(
        capsys,
        "upload",
        "--server",
        address,
        "--party",
        "custodian",
        "--project",
        project,
        str(tmp_path / "c.json"),
        "--schema",
        str(default_schema_path()),
    )
    assert "uploaded 400 encodings as custodian" in out

    assert "run: done" in run(
        capsys,
        "status",
        "--server",
        address,
        "--party",
        "requester",
        "--project",
        project,
        "--watch",
    )
    run(
        capsys,
        "results",
        "--server",
        address,
        "--party",
        "requester",
        "--project",
        project,
        "--id-map",
        str(tmp_path / "r.json"),
        "--out",
        str(tmp_path / "r.csv"),
    )
    with open(tmp_path / "r.csv", newline="") as f:
        released = {row["id"] for row in csv.DictReader(f)}
    quality = membership_quality(released, {r for r, _ in read_truth(files.truth)})
    assert quality.precision >= 0.97 and quality.recall >= 0.85

    # The custodian has no ID map for clkhash JSON: its row references are positions in "clks".
    with open(files.custodian, newline="", encoding="utf-8") as f:
        custodian_ids = [row["id"] for row in csv.DictReader(f)]
    (tmp_path / "c-map.json").write_text(json.dumps({"content_sha256": "", "ids": custodian_ids}))
    run(
        capsys,
        "results",
        "--server",
        address,
        "--party",
        "custodian",
        "--project",
        project,
        "--id-map",
        str(tmp_path / "c-map.json"),
        "--out",
        str(tmp_path / "c.csv"),
    )
    with open(tmp_path / "c.csv", newline="") as f:
        custodian_released = {row["id"] for row in csv.DictReader(f)}
    truth = dict(read_truth(files.truth))
    assert len(custodian_released) == len(released)
    assert len(custodian_released & {truth[r] for r in released if r in truth}) >= 0.95 * len(
        released
    )


def test_schema_hash_matches_the_loaded_schema(
    schema: LinkageSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "schema", "hash").strip() == schema.sha256
    assert json.loads(run(capsys, "schema", "default"))["version"] == 3
