"""The party workflow through the `blindlink` command line against a real TLS server."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from clkhash import clk
from clkhash.serialization import serialize_bitarray
from conftest import Cli, Identities, clkhash_schema, party_args, run, sign_args, tls_args

from blindlink.cli.main import main
from blindlink.encoding.schema import LinkageSchema, default_schema_path
from blindlink.evaluation import membership_quality, read_truth
from blindlink.synthetic import generate_datasets


def test_agreement_new_sign_verify(
    tmp_path: Path, identities: Identities, capsys: pytest.CaptureFixture[str]
) -> None:
    agreement = tmp_path / "agreement.json"
    parties = party_args(identities)
    run(capsys, "agreement", "new", "--reference", "cli test", *parties, "--out", str(agreement))
    assert main(["agreement", "verify", str(agreement)]) == 1
    assert "has not signed" in capsys.readouterr().out
    run(capsys, "agreement", "sign", str(agreement), *sign_args(identities, "requester"))
    # The requester's certificate cannot sign as the custodian.
    requester_as_custodian = [*sign_args(identities, "requester")]
    requester_as_custodian[1] = "custodian"
    assert main(["agreement", "sign", str(agreement), *requester_as_custodian]) == 2
    assert "not the custodian's certificate" in capsys.readouterr().err
    run(capsys, "agreement", "sign", str(agreement), *sign_args(identities, "custodian"))
    ca = str(identities.pki.ca_cert)
    verified = run(capsys, "agreement", "verify", str(agreement), "--ca", ca)
    assert "signed by the holders of both named certificates" in verified
    assert "signed by the holders" in run(capsys, "agreement", "verify", str(agreement))
    other_ca = str(identities.foreign.cert.parent / "ca.pem")
    assert main(["agreement", "verify", str(agreement), "--ca", other_ca]) == 1
    refused = capsys.readouterr().out
    for role in ("requester", "custodian"):
        assert f"the {role}'s certificate is not a client certificate of this CA" in refused


def test_encode_upload_watch_results(
    tmp_path: Path,
    address: str,
    identities: Identities,
    make_agreement,
    schema: LinkageSchema,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = generate_datasets(tmp_path / "data", 400, 0.5, seed=5)
    secret = tmp_path / "secret"
    run(capsys, "secret", "new", "--out", str(secret))
    agreement = tmp_path / "agreement.json"
    # A fixed threshold: this checks the workflow; calibrated runs on 400 records vary with the
    # secret (tests/test_decision.py and test_run_decisions.py check calibration).
    agreement.write_bytes(make_agreement(custodian_release="own_rows", threshold=0.8))
    req, cus = tls_args(identities, "requester"), tls_args(identities, "custodian")
    project = run(
        capsys,
        "project",
        "create",
        "--server",
        address,
        "--party",
        "requester",
        *req,
        "--agreement",
        str(agreement),
    ).strip()
    assert len(project) == 64

    # The custodian uploads clkhash's own JSON output, made with the same schema and secret...
    with open(files.custodian, encoding="utf-8") as f:
        clks = clk.generate_clk_from_csv(
            f,
            secret.read_bytes().strip(),
            clkhash_schema(schema),
            progress_bar=False,
            max_workers=1,
        )
    (tmp_path / "c.json").write_text(json.dumps({"clks": [serialize_bitarray(c) for c in clks]}))
    out = run(
        capsys,
        "upload",
        "--server",
        address,
        "--party",
        "custodian",
        *cus,
        "--project",
        project,
        str(tmp_path / "c.json"),
        "--schema",
        str(default_schema_path()),
    )
    assert "uploaded 400 encodings as custodian" in out
    # ...the requester uses blindlink's encoder.
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
    out = run(
        capsys,
        "upload",
        "--server",
        address,
        "--party",
        "requester",
        *req,
        "--project",
        project,
        str(tmp_path / "r.bin"),
        "--receipt",
        str(tmp_path / "receipt.json"),
    )
    assert "run " in out
    assert json.loads((tmp_path / "receipt.json").read_text())["kind"] == "upload_committed"

    assert "done" in run(
        capsys,
        "status",
        "--server",
        address,
        "--party",
        "requester",
        *req,
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
        *req,
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
        *cus,
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


def test_party_commands_need_tls_material(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["status", "--server", "127.0.0.1:1", "--party", "requester", "--project", "x"]) == 2
    )
    assert "no TLS material" in capsys.readouterr().err
    assert (
        main(
            [
                "status",
                "--server",
                "example.org:443",
                "--party",
                "requester",
                "--project",
                "x",
                "--insecure",
            ]
        )
        == 2
    )
    assert "only for servers on loopback" in capsys.readouterr().err


def test_schema_hash_matches_the_loaded_schema(
    schema: LinkageSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "schema", "hash").strip() == schema.sha256
    assert json.loads(run(capsys, "schema", "default"))["version"] == 3


def test_hardened_linkage_through_the_cli(cli: Cli, tmp_path: Path) -> None:
    """The agreement's hardening steps shape the encodings both parties upload."""
    files = generate_datasets(tmp_path / "data", 300, 0.5, seed=9)
    agreement = cli.signed_agreement(
        "hardened", "--hardening", '[{"kind": "xor_fold", "folds": 1}]', "--threshold", "0.7"
    )
    assert json.loads(agreement.read_text())["agreement"]["encoding"]["bit_length"] == 512
    bad = ["--hardening", '[{"kind": "fold"}]', "--out", str(tmp_path / "bad.json")]
    parties = party_args(cli.identities)
    assert main(["agreement", "new", "--reference", "x", *parties, *bad]) == 2
    assert "fold" in cli.capsys.readouterr().err
    project, printed = cli.link(agreement, files)
    assert all("(512 bits)" in out for out in printed.values())
    # Uploading the same batch again (say, after a lost reply) points at the run it started.
    again = cli.party("requester", "upload", "--project", project, str(tmp_path / "requester.bin"))
    assert "uploaded before" in again and "nothing new was stored" in again
