"""A batch's purpose over real gRPC with mutual TLS: an agreement's batch_purpose makes the
server refuse requester batches without an acceptable purpose (storing and matching nothing)
and record the purpose in the batch's audit entry; without the section batches carry none."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import Cli, Identities, tls_args

import blindlink as bl
from blindlink._generated import linkage_pb2 as pb
from blindlink._generated import linkage_pb2_grpc as pb_grpc
from blindlink.audit.chain import AuditEntry, read_entries
from blindlink.cli.main import main
from blindlink.client.linkage_client import LinkageClient, ServerError
from blindlink.encoding.encodings_file import write_encodings
from blindlink.encoding.schema import LinkageSchema
from blindlink.errors import BlindlinkError
from blindlink.security.tls import channel_credentials
from blindlink.server.app import RunningServer

ROWS = np.random.default_rng(5).integers(0, 256, size=(30, 128), dtype=np.uint8)
CASE = "case 2026/114: benefit review"


def encodings(path: Path, rows: np.ndarray, schema: LinkageSchema) -> Path:
    write_encodings(path, rows.shape[1] * 8, schema.sha256, [rows.tobytes()])
    return path


def audit(server: RunningServer, project: str) -> list[AuditEntry]:
    db = sqlite3.connect(server.store.data_dir / "blindlink.db")
    try:
        return read_entries(db, project)
    finally:
        db.close()


@pytest.fixture
def start(
    requester: LinkageClient,
    custodian: LinkageClient,
    make_agreement: Callable[..., bytes],
    schema: LinkageSchema,
    tmp_path: Path,
) -> Callable[..., tuple[str, Path]]:
    """Create a project under an agreement with these settings and upload the custodian's
    records: the project ID and a requester batch (its first ten rows are the custodian's)."""

    def start(**settings: object) -> tuple[str, Path]:
        project = requester.create_project(make_agreement(**settings)).project_id
        custodian.upload(project, encodings(tmp_path / "c.bin", ROWS[:20], schema))
        return project, encodings(tmp_path / "r.bin", ROWS[10:], schema)

    return start


def upload_header(
    project: str, schema: LinkageSchema, rows: np.ndarray, purpose: str
) -> pb.UploadHeader:
    """The header of a requester upload of `rows` with `purpose`."""
    return pb.UploadHeader(
        project_id=project,
        count=len(rows),
        bit_length=rows.shape[1] * 8,
        schema_sha256=schema.sha256,
        content_sha256=hashlib.sha256(rows.tobytes()).digest(),
        purpose=purpose,
    )


def raw_upload(
    address: str, identities: Identities, project: str, schema: LinkageSchema, purpose: str
) -> None:
    """A requester upload made with the generated stub, so that the purpose reaches the server
    as given (the blindlink client refuses some purposes itself)."""
    rows = ROWS[10:]
    header = upload_header(project, schema, rows, purpose)
    tls = identities.tls("requester")
    credentials = channel_credentials(tls.ca, tls.cert, tls.key)
    with grpc.secure_channel(address, credentials) as channel:
        messages = [pb.UploadRequest(header=header), pb.UploadRequest(encodings=rows.tobytes())]
        pb_grpc.LinkageStub(channel).Upload(iter(messages))


REFUSALS = [
    # (agreement settings, the purpose sent, the rule the refusal names, words in it)
    ({"require_purpose": True}, "", "batch_purpose", "requires each batch to declare"),
    ({"allowed_purposes": ["audit", "fraud"]}, "", "batch_purpose", "one of 'audit', 'fraud'"),
    (
        {"allowed_purposes": [f"v{i}" for i in range(7)]},
        "",
        "batch_purpose",
        "'v4', ... (7 in all)",
    ),
    ({"purpose_max_length": 10}, "x" * 11, "batch_purpose.max_length", "has 11 characters"),
    ({"require_purpose": True}, "é" * 201, "batch_purpose.max_length", "at most 200"),
    ({"allowed_purposes": ["audit", "fraud"]}, "Audit", "batch_purpose.allowed", "not one of"),
    ({"require_purpose": True}, "   ", "batch_purpose", "the purpose is blank"),
    ({"require_purpose": True}, "case\n12", "batch_purpose", "character 5 is a control"),
    ({"require_purpose": True}, "case \u202e21", "batch_purpose", "(U+202E)"),
    ({}, CASE, "batch_purpose", "the agreement does not ask batches for a purpose"),
]


@pytest.mark.parametrize(("settings", "purpose", "rule", "words"), REFUSALS)
def test_a_batch_without_an_acceptable_purpose_is_refused_and_changes_nothing(
    start: Callable[..., tuple[str, Path]],
    server: RunningServer,
    address: str,
    identities: Identities,
    schema: LinkageSchema,
    settings: dict[str, object],
    purpose: str,
    rule: str,
    words: str,
) -> None:
    project, _ = start(**settings)
    logged = len(audit(server, project))
    files = sorted(server.store.encodings_dir.iterdir())

    with pytest.raises(grpc.RpcError) as err:
        raw_upload(address, identities, project, schema, purpose)

    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{rule}: ")
    assert words in err.value.details()
    assert server.store.uploads(project, "requester") == []
    assert server.store.runs(project) == []
    assert sorted(server.store.encodings_dir.iterdir()) == files
    refusals = audit(server, project)[logged:]
    assert [(e.kind, e.party, e.details) for e in refusals] == [
        ("request_refused", "requester", {"rule": rule, "method": "Upload"})
    ]


def test_the_custodians_upload_carries_no_purpose(
    requester: LinkageClient,
    custodian: LinkageClient,
    make_agreement: Callable[..., bytes],
    server: RunningServer,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    project = requester.create_project(make_agreement(require_purpose=True)).project_id
    with pytest.raises(ServerError) as err:
        custodian.upload(project, encodings(tmp_path / "c.bin", ROWS, schema), purpose=CASE)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "only the requester's batches declare a purpose" in err.value.details
    assert server.store.uploads(project) == []


def test_an_accepted_purpose_is_recorded_in_the_batchs_audit_entry_only(
    start: Callable[..., tuple[str, Path]],
    server: RunningServer,
    address: str,
    identities: Identities,
    schema: LinkageSchema,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project, _ = start(allowed_purposes=[CASE, "fraud check"])
    batch = bl.Encoded(ROWS[10:], tuple(f"p{i}" for i in range(20)), 0, schema.sha256)
    with bl.Client(address, "requester", identities.tls("requester")) as client:
        run_id = client.upload(project, batch, purpose=CASE)
        client.wait(project, run_id)
        results = client.results(project, run_id, batch)
    assert results.ids == tuple(f"p{i}" for i in range(10))

    recorded = [(e.kind, e.party, e.details.get("purpose")) for e in audit(server, project)]
    assert ("upload_committed", "requester", CASE) in recorded
    assert [r for r in recorded if r[2] is not None] == [("upload_committed", "requester", CASE)]
    # The log with the purpose still verifies, and exports as before.
    data_dir = str(server.store.data_dir)
    assert main(["admin", "verify", "--data-dir", data_dir]) == 0, capsys.readouterr()
    export = tmp_path / "audit.jsonl"
    assert main(["audit", "export", "--data-dir", data_dir, "--out", str(export)]) == 0
    verify = ["audit", "verify", str(export), "--server-key", server.public_key]
    assert main(verify) == 0, capsys.readouterr()
    assert CASE in export.read_text(encoding="utf-8")


def test_the_same_batch_for_another_purpose_is_a_new_batch(
    start: Callable[..., tuple[str, Path]], requester: LinkageClient, server: RunningServer
) -> None:
    """Retrying a batch (same purpose) returns its run; the same records for another purpose
    are a batch of their own, so that each purpose is recorded with the run it started."""
    project, batch = start(require_purpose=True)
    first = requester.upload(project, batch, purpose=CASE)
    again = requester.upload(project, batch, purpose=CASE)
    other = requester.upload(project, batch, purpose="case 2026/115")

    assert json.loads(again.receipt)["kind"] == "upload_repeated"
    assert again.run_id == first.run_id
    assert json.loads(other.receipt)["details"]["purpose"] == "case 2026/115"
    assert len({first.run_id, other.run_id}) == 2
    assert len(server.store.runs(project)) == 2


def test_batches_carry_no_purpose_under_an_agreement_without_the_section(
    start: Callable[..., tuple[str, Path]], requester: LinkageClient, server: RunningServer
) -> None:
    project, batch = start()
    receipt = requester.upload(project, batch)
    assert requester.wait(project, receipt.run_id).state == pb.RUN_STATE_DONE
    entry = json.loads(receipt.receipt)
    assert entry["kind"] == "upload_committed"
    assert "purpose" not in entry["details"]
    assert len(requester.release(project, receipt.run_id).own_rows) == 10


def test_the_client_refuses_a_purpose_that_is_not_text_before_sending(
    start: Callable[..., tuple[str, Path]], requester: LinkageClient, server: RunningServer
) -> None:
    project, batch = start(require_purpose=True)
    logged = len(audit(server, project))
    with pytest.raises(BlindlinkError, match=r"character 6 is a lone surrogate \(U\+D800\)"):
        requester.upload(project, batch, purpose="case \ud800")
    assert len(audit(server, project)) == logged
    assert server.store.runs(project) == []


def test_the_command_line_agrees_on_and_declares_a_purpose(
    cli: Cli, schema: LinkageSchema, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agreement = cli.signed_agreement(
        "purposes", "--hardening", "[]", "--allowed-purpose", CASE, "--allowed-purpose", "audit"
    )
    signed = json.loads(agreement.read_text(encoding="utf-8"))
    assert signed["agreement"]["batch_purpose"] == {"allowed": [CASE, "audit"]}
    project = cli.party("requester", "project", "create", "--agreement", str(agreement)).strip()
    cli.party(
        "custodian",
        "upload",
        "--project",
        project,
        str(encodings(tmp_path / "c.bin", ROWS, schema)),
    )
    batch = str(encodings(tmp_path / "r.bin", ROWS[10:], schema))
    upload = ["upload", "--project", project, batch]
    tls = tls_args(cli.identities, "requester")
    refused = main([*upload, "--server", cli.address, "--party", "requester", *tls])
    assert refused == 2
    assert "batch_purpose: the agreement requires each batch" in capsys.readouterr().err
    receipt = tmp_path / "receipt.json"
    cli.party("requester", *upload, "--purpose", CASE, "--receipt", str(receipt))
    assert json.loads(receipt.read_text(encoding="utf-8"))["details"]["purpose"] == CASE


def test_a_purpose_that_is_not_utf8_is_refused_as_a_bad_message(
    start: Callable[..., tuple[str, Path]],
    server: RunningServer,
    address: str,
    identities: Identities,
    schema: LinkageSchema,
) -> None:
    """A lone surrogate cannot be encoded as UTF-8, so a client that sends one anyway sends
    bytes that are not a valid message."""
    project, _ = start(require_purpose=True)
    rows = ROWS[10:]
    header = upload_header(project, schema, rows, "\0\0\0")
    valid = pb.UploadRequest(header=header).SerializeToString()
    # The purpose's three bytes become U+D800 as if it were UTF-8.
    messages = [
        valid.replace(b"\x3a\x03\0\0\0", b"\x3a\x03\xed\xa0\x80"),
        pb.UploadRequest(encodings=rows.tobytes()).SerializeToString(),
    ]
    assert messages[0] != valid
    tls = identities.tls("requester")
    credentials = channel_credentials(tls.ca, tls.cert, tls.key)
    with grpc.secure_channel(address, credentials) as channel:
        upload = channel.stream_unary("/blindlink.v1.Linkage/Upload")
        with pytest.raises(grpc.RpcError) as err:
            upload(iter(messages))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server.store.uploads(project, "requester") == []
