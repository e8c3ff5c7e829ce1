"""The linkage server over real gRPC sockets with mutual TLS: uploads, refusals that change
nothing, runs and releases."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import Identities
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.calls import header_for, raw_upload, run_project, secure_channel, shared_rows
from support.encodings import encodings_file, random_rows
from support.server_state import assert_unchanged, audit, snapshot, state, state_changes
from support.waiting import wait_until

from blindlink._generated import linkage_pb2 as pb
from blindlink._generated import linkage_pb2_grpc as pb_grpc
from blindlink.audit.checkpoint import CHECKPOINT_NAME
from blindlink.client.linkage_client import LinkageClient, ServerError
from blindlink.encoding.encodings_file import read_payload
from blindlink.encoding.schema import LinkageSchema
from blindlink.server.app import RunningServer, ServerTls, start_server
from blindlink.server.runs import RunProgress
from blindlink.store.directory import STAGED_TTL_S


@pytest.fixture
def project(requester: LinkageClient, make_agreement: Callable[..., bytes]) -> str:
    return requester.create_project(make_agreement()).project_id


def test_health_and_reflection_are_served(address: str, identities: Identities) -> None:
    with secure_channel(address, identities, "requester") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="blindlink.v1.Linkage")
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert "blindlink.v1.Linkage" in names


def test_create_project_twice_is_refused(
    requester: LinkageClient, make_agreement: Callable[..., bytes]
) -> None:
    # The same signed bytes twice (a new document would carry a new validity start time).
    agreement = make_agreement()
    first = requester.create_project(agreement)
    assert first.project_id == hashlib.sha256(first.agreement).hexdigest()
    assert first.server_public_key.startswith("ed25519:")
    with pytest.raises(ServerError) as err:
        requester.create_project(agreement)
    assert err.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_invalid_agreement_is_refused(requester: LinkageClient, server: RunningServer) -> None:
    before = snapshot(server)
    with pytest.raises(ServerError) as err:
        requester.create_project(b'{"blindlink_agreement": 1, "reference": "x"}')
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "parties" in err.value.details
    assert_unchanged(before, snapshot(server))


@pytest.mark.parametrize(
    ("replace", "words"),
    [
        ((b'"fallback_threshold":0.8', b'"fallback_threshold":NaN'), "NaN is not a JSON number"),
        ((b'"reference":"test agreement"', b'"reference":"\\ud800"'), "lone surrogate"),
    ],
)
def test_agreement_with_nan_or_a_lone_surrogate_is_refused_as_invalid(
    requester: LinkageClient,
    server: RunningServer,
    make_agreement: Callable[..., bytes],
    replace: tuple[bytes, bytes],
    words: str,
) -> None:
    signed = make_agreement(hardening=[])
    assert replace[0] in signed
    before = snapshot(server)
    with pytest.raises(ServerError) as err:
        requester.create_project(signed.replace(*replace))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.value.details
    assert_unchanged(before, snapshot(server))


def test_upload_to_unknown_project(
    requester: LinkageClient, server: RunningServer, schema: LinkageSchema, tmp_path: Path
) -> None:
    path = encodings_file(tmp_path / "e.bin", random_rows(5, 1), schema.sha256)
    before = snapshot(server)
    with pytest.raises(ServerError) as err:
        requester.upload("0" * 64, path)
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert_unchanged(before, snapshot(server))


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"bit_length": 512}, grpc.StatusCode.INVALID_ARGUMENT, "512 bits"),
        (
            {"schema_sha256": "ab" * 32},
            grpc.StatusCode.FAILED_PRECONDITION,
            "different linkage schema",
        ),
        ({"count": 0}, grpc.StatusCode.INVALID_ARGUMENT, "at least one"),
        ({"content_sha256": b"short"}, grpc.StatusCode.INVALID_ARGUMENT, "32 bytes"),
    ],
)
def test_bad_upload_header_is_refused_and_changes_nothing(
    address: str,
    identities: Identities,
    server: RunningServer,
    project: str,
    schema: LinkageSchema,
    change: dict[str, object],
    code: grpc.StatusCode,
    words: str,
) -> None:
    rows = random_rows(5, 2)
    before = snapshot(server)
    with pytest.raises(grpc.RpcError) as err:
        raw_upload(
            address,
            identities,
            [
                header_for(project, rows, schema.sha256, **change),
                pb.UploadRequest(encodings=rows.tobytes()),
            ],
        )
    assert err.value.code() == code
    assert words in err.value.details()
    assert_unchanged(before, snapshot(server))


def test_wrong_bit_length_encodings_file_is_refused(
    requester: LinkageClient,
    server: RunningServer,
    project: str,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    path = encodings_file(tmp_path / "e.bin", random_rows(5, 3, bits=512), schema.sha256)
    before = snapshot(server)
    with pytest.raises(ServerError) as err:
        requester.upload(project, path)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "the agreement says 1024" in err.value.details
    assert_unchanged(before, snapshot(server))


@pytest.mark.parametrize("kind", ["oversized", "altered", "no header", "two headers"])
def test_bad_upload_stream_is_refused_and_changes_nothing(
    address: str,
    identities: Identities,
    server: RunningServer,
    project: str,
    schema: LinkageSchema,
    kind: str,
) -> None:
    rows = random_rows(10, 4)
    header = header_for(project, rows, schema.sha256)
    data = rows.tobytes()
    messages = {
        "oversized": [header, pb.UploadRequest(encodings=data + data[:128])],
        "altered": [header, pb.UploadRequest(encodings=bytes([data[0] ^ 1]) + data[1:])],
        "no header": [pb.UploadRequest(encodings=data)],
        "two headers": [header, header],
    }[kind]
    before = snapshot(server)
    with pytest.raises(grpc.RpcError) as err:
        raw_upload(address, identities, messages)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details()
    assert_unchanged(before, snapshot(server))
    # The refused upload left the project as it was: a correct one is accepted.
    assert raw_upload(address, identities, [header, pb.UploadRequest(encodings=data)]).run_id


def kept_upload(server: RunningServer) -> dict[str, bytes]:
    """The files of interrupted uploads the server keeps, by name."""
    return {p.name: p.read_bytes() for p in server.store.staged_dir.iterdir()}


def committed_payload(server: RunningServer, upload_id: str) -> bytes:
    """The record bytes of a committed upload, as the server stored them."""
    upload = server.store.upload(upload_id)
    assert upload is not None and upload.path is not None
    return read_payload(upload.path)[1]


def upload_offset(
    address: str, identities: Identities, project: str, rows: np.ndarray, role: str
) -> int:
    with secure_channel(address, identities, role) as channel:
        request = pb.UploadOffsetRequest(
            project_id=project, content_sha256=hashlib.sha256(rows.tobytes()).digest()
        )
        return pb_grpc.LinkageStub(channel).GetUploadOffset(request).offset


def broken_off_upload(
    address: str,
    identities: Identities,
    project: str,
    schema: LinkageSchema,
    rows: np.ndarray,
    sent: bytes,
) -> grpc.RpcError:
    """An upload of `rows` whose stream ends after the bytes `sent`: the server's refusal."""
    with pytest.raises(grpc.RpcError) as err:
        raw_upload(
            address,
            identities,
            [header_for(project, rows, schema.sha256), pb.UploadRequest(encodings=sent)],
        )
    return err.value


def test_cancelled_upload_stream_commits_nothing_and_keeps_what_arrived(
    address: str, identities: Identities, server: RunningServer, project: str, schema: LinkageSchema
) -> None:
    rows = random_rows(10, 5)
    before, _ = snapshot(server)
    sent_half = []

    def messages() -> Iterator[pb.UploadRequest]:
        yield header_for(project, rows, schema.sha256)
        yield pb.UploadRequest(encodings=rows.tobytes()[:640])
        sent_half.append(True)
        time.sleep(30)  # the client gives up long before this

    with secure_channel(address, identities, "requester") as channel:
        future = pb_grpc.LinkageStub(channel).Upload.future(messages())
        assert wait_until(lambda: bool(sent_half), every=0.01)
        time.sleep(0.2)
        future.cancel()
    assert wait_until(
        lambda: upload_offset(address, identities, project, rows, "requester") >= 640, every=0.05
    ), "the server did not keep the bytes that arrived"
    assert snapshot(server)[0] == before  # nothing committed, no run
    # The other party learns nothing of it.
    assert upload_offset(address, identities, project, rows, "custodian") == 0
    # The upload continues from the kept bytes, and what is committed is the whole of it.
    rest = pb.UploadRequest(encodings=rows.tobytes()[640:])
    receipt = raw_upload(
        address, identities, [header_for(project, rows, schema.sha256, offset=640), rest]
    )
    assert committed_payload(server, receipt.upload_id) == rows.tobytes()
    assert kept_upload(server) == {}


def test_truncated_upload_is_kept_and_the_client_continues_it(
    address: str,
    identities: Identities,
    server: RunningServer,
    requester: LinkageClient,
    project: str,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    rows = random_rows(10, 8)
    data = rows.tobytes()
    refused = broken_off_upload(address, identities, project, schema, rows, data[:300])
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "continue from byte 300" in (refused.details() or "")
    assert upload_offset(address, identities, project, rows, "requester") == 300
    sent: list[int] = []
    receipt = requester.upload(
        project, encodings_file(tmp_path / "e.bin", rows, schema.sha256), progress=sent.append
    )
    assert committed_payload(server, receipt.upload_id) == data
    assert sum(sent) == len(data)
    assert upload_offset(address, identities, project, rows, "requester") == 0


def test_continued_upload_is_checked_whole(
    address: str,
    identities: Identities,
    server: RunningServer,
    requester: LinkageClient,
    project: str,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    """Kept bytes that differ from the file's are caught by the content hash: nothing is
    committed, nothing stays kept, and the next attempt starts afresh and succeeds."""
    rows = random_rows(10, 9)
    wrong = bytes(b ^ 1 for b in rows.tobytes()[:300])
    broken_off_upload(address, identities, project, schema, rows, wrong)
    path = encodings_file(tmp_path / "e.bin", rows, schema.sha256)
    before, _ = snapshot(server)
    with pytest.raises(ServerError) as refused:
        requester.upload(project, path)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "content hash does not match" in refused.value.details
    assert snapshot(server)[0] == before
    assert kept_upload(server) == {}
    receipt = requester.upload(project, path)
    assert committed_payload(server, receipt.upload_id) == rows.tobytes()


@pytest.mark.parametrize(
    ("offset", "code", "words"),
    [
        (301, grpc.StatusCode.FAILED_PRECONDITION, "the server keeps 300 bytes"),
        (10 * 128 + 1, grpc.StatusCode.INVALID_ARGUMENT, "beyond the upload's 10 encodings"),
    ],
)
def test_continuing_past_the_kept_bytes_is_refused(
    address: str,
    identities: Identities,
    server: RunningServer,
    project: str,
    schema: LinkageSchema,
    offset: int,
    code: grpc.StatusCode,
    words: str,
) -> None:
    rows = random_rows(10, 10)
    data = rows.tobytes()
    broken_off_upload(address, identities, project, schema, rows, data[:300])
    kept = kept_upload(server)
    with pytest.raises(grpc.RpcError) as err:
        raw_upload(
            address,
            identities,
            [
                header_for(project, rows, schema.sha256, offset=offset),
                pb.UploadRequest(encodings=data[offset:]),
            ],
        )
    assert err.value.code() == code
    assert words in (err.value.details() or "")
    assert kept_upload(server) == kept  # the kept bytes are still there to continue


def test_deleting_the_project_removes_kept_uploads(
    address: str,
    identities: Identities,
    server: RunningServer,
    requester: LinkageClient,
    project: str,
    schema: LinkageSchema,
) -> None:
    rows = random_rows(10, 11)
    broken_off_upload(address, identities, project, schema, rows, rows.tobytes()[:300])
    assert kept_upload(server)
    requester.delete(project)
    assert kept_upload(server) == {}


def test_duplicate_custodian_upload_is_refused_and_keeps_the_first(
    custodian: LinkageClient,
    server: RunningServer,
    project: str,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    first = encodings_file(tmp_path / "a.bin", random_rows(5, 6), schema.sha256)
    custodian.upload(project, first)
    before = snapshot(server)
    second = encodings_file(tmp_path / "b.bin", random_rows(5, 7), schema.sha256)
    for path in (first, second):
        with pytest.raises(ServerError) as err:
            custodian.upload(project, path)
        assert err.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert_unchanged(before, snapshot(server))


def test_a_repeated_batch_returns_its_run_and_stores_nothing_new(
    requester: LinkageClient,
    custodian: LinkageClient,
    make_agreement: Callable[..., bytes],
    server: RunningServer,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    """Retrying an upload whose reply was lost neither starts a second run nor counts against
    the limits (here: one batch per period)."""
    agreement = make_agreement(max_uploads_per_period=1, threshold=0.8, threshold_floor=0.5)
    project, run_id = run_project(requester, custodian, agreement, schema, tmp_path)
    batch = [u for u in requester.status(project).uploads if u.party == "requester"][0]
    before = state(server)
    entries = len(audit(server, project))

    again = requester.upload(project, tmp_path / "r.bin")

    assert (again.upload_id, again.run_id) == (batch.upload_id, run_id)
    receipt = json.loads(again.receipt)
    assert receipt["kind"] == "upload_repeated"
    assert receipt["details"]["upload_id"] == batch.upload_id
    assert receipt["details"]["run_id"] == run_id
    assert_unchanged(before, state(server))
    assert [e.kind for e in audit(server, project)[entries:]] == ["upload_repeated"]
    # Anything else is a new batch, and the limit of one per period applies to it.
    other = encodings_file(tmp_path / "other.bin", random_rows(20, 99), schema.sha256)
    for path, threshold in ((other, 0.0), (tmp_path / "r.bin", 0.6)):
        with pytest.raises(ServerError) as err:
            requester.upload(project, path, threshold)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details.startswith("limits.max_uploads_per_period")


def test_a_batch_uploaded_again_after_its_encodings_were_deleted_is_a_new_run(
    requester: LinkageClient,
    custodian: LinkageClient,
    make_agreement: Callable[..., bytes],
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    project, run_id = run_project(requester, custodian, make_agreement(), schema, tmp_path)
    requester.release(project, run_id)
    custodian.release(project, run_id)  # both fetched: the batch's encodings are deleted
    again = requester.upload(project, tmp_path / "r.bin")
    assert again.run_id != run_id
    assert json.loads(again.receipt)["kind"] == "upload_committed"
    assert requester.wait(project, again.run_id).state == pb.RUN_STATE_DONE


def test_release_before_the_run_is_refused(
    requester: LinkageClient, project: str, schema: LinkageSchema, tmp_path: Path
) -> None:
    run_id = requester.upload(
        project, encodings_file(tmp_path / "r.bin", random_rows(5, 8), schema.sha256)
    ).run_id
    with pytest.raises(ServerError) as err:
        requester.release(project, run_id)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "waiting" in err.value.details


def test_requester_batch_waits_for_the_custodian(
    requester: LinkageClient,
    custodian: LinkageClient,
    project: str,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    req_rows, cus_rows = shared_rows()
    run_id = requester.upload(
        project, encodings_file(tmp_path / "r.bin", req_rows, schema.sha256)
    ).run_id
    assert next(requester.watch(project, run_id)).state == pb.RUN_STATE_WAITING_FOR_UPLOADS
    custodian.upload(project, encodings_file(tmp_path / "c.bin", cus_rows, schema.sha256))
    assert requester.wait(project, run_id).state == pb.RUN_STATE_DONE
    assert list(requester.release(project, run_id).own_rows) == list(range(10))


def test_a_run_passes_through_its_stages_in_order(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    make_agreement: Callable[..., bytes],
    schema: LinkageSchema,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every stage a run enters, as the run queue records it (a watcher may miss a short one)."""
    stages: list[str] = []
    record = server.runs._set

    def recording(run_id: str, progress: RunProgress) -> None:
        if not stages or stages[-1] != progress.stage:
            stages.append(progress.stage)
        record(run_id, progress)

    monkeypatch.setattr(server.runs, "_set", recording)
    run_project(requester, custodian, make_agreement(), schema, tmp_path)
    assert stages == ["", "loading", "comparing", "deciding", "storing"]


def test_own_rows_for_requester_count_for_custodian(
    requester: LinkageClient,
    custodian: LinkageClient,
    make_agreement: Callable[..., bytes],
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    project, run_id = run_project(requester, custodian, make_agreement(), schema, tmp_path)
    mine = requester.release(project, run_id)
    assert mine.kind == pb.RELEASE_KIND_OWN_ROWS
    assert list(mine.own_rows) == list(range(10))
    assert list(mine.other_rows) == []
    theirs = custodian.release(project, run_id)
    assert theirs.kind == pb.RELEASE_KIND_COUNT
    assert theirs.match_count == 10
    assert list(theirs.own_rows) == [] and list(theirs.other_rows) == []


def test_pairs_and_nothing(
    requester: LinkageClient,
    custodian: LinkageClient,
    make_agreement: Callable[..., bytes],
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    agreement = make_agreement(requester_release="nothing", custodian_release="pairs")
    project, run_id = run_project(requester, custodian, agreement, schema, tmp_path)
    nothing = requester.release(project, run_id)
    assert nothing.kind == pb.RELEASE_KIND_NOTHING
    assert (nothing.match_count, list(nothing.own_rows), list(nothing.other_rows)) == (0, [], [])
    pairs = custodian.release(project, run_id)
    assert pairs.kind == pb.RELEASE_KIND_PAIRS
    assert sorted(zip(pairs.own_rows, pairs.other_rows, strict=True)) == [
        (10 + i, 9 - i) for i in range(10)
    ]


def test_custodian_own_rows(
    requester: LinkageClient,
    custodian: LinkageClient,
    make_agreement: Callable[..., bytes],
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    project, run_id = run_project(
        requester, custodian, make_agreement(custodian_release="own_rows"), schema, tmp_path
    )
    assert list(custodian.release(project, run_id).own_rows) == list(range(10, 20))


def test_status_hides_the_other_partys_count(
    requester: LinkageClient,
    custodian: LinkageClient,
    project: str,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    requester.upload(project, encodings_file(tmp_path / "r.bin", random_rows(7, 12), schema.sha256))
    own = {u.party: u for u in requester.status(project).uploads}
    other = {u.party: u for u in custodian.status(project).uploads}
    assert own["requester"].uploaded and own["requester"].count == 7
    assert other["requester"].uploaded and other["requester"].count == 0
    assert not other["requester"].upload_id
    assert not own["custodian"].uploaded


def test_delete_removes_encodings_and_results(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    make_agreement: Callable[..., bytes],
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    project, run_id = run_project(requester, custodian, make_agreement(), schema, tmp_path)
    receipt = custodian.delete(project).receipt
    assert '"data_deleted"' in receipt
    assert list(server.store.encodings_dir.iterdir()) == []
    rows, _ = snapshot(server)
    assert [r for r in rows if not r.startswith('INSERT INTO "audit_log"')] == []
    with pytest.raises(ServerError) as err:
        requester.release(project, run_id)
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_a_deleted_project_stays_deleted(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    make_agreement: Callable[..., bytes],
) -> None:
    """Neither party can undo the other's deletion (or reset the limit history) by creating
    the project again from the same signed agreement."""
    agreement = make_agreement()
    project = requester.create_project(agreement).project_id
    custodian.delete(project)
    before = snapshot(server)
    for client in (requester, custodian):
        with pytest.raises(ServerError) as err:
            client.create_project(agreement)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details.startswith("project: ") and "stays deleted" in err.value.details
    rows, files = snapshot(server)
    assert [r for r in rows if not r.startswith('INSERT INTO "audit_log"')] == [
        r for r in before[0] if not r.startswith('INSERT INTO "audit_log"')
    ]
    assert files == before[1]
    assert requester.create_project(make_agreement(reference="a new agreement")).project_id


def test_unhardened_encodings_are_refused_when_hardening_is_agreed(
    requester: LinkageClient,
    make_agreement: Callable[..., bytes],
    server: RunningServer,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    # Diffusion keeps the bit length, so only the encodings' origin in the header tells.
    project = requester.create_project(
        make_agreement(hardening=[{"kind": "diffusion", "t": 3}])
    ).project_id
    path = encodings_file(tmp_path / "plain.bin", random_rows(5, 13), schema.sha256)
    before = snapshot(server)
    with pytest.raises(ServerError) as err:
        requester.upload(project, path)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "hardening" in err.value.details
    assert_unchanged(before, snapshot(server))


def test_a_data_dir_from_before_runs_had_their_own_ids_still_works(
    tmp_path: Path,
    identities: Identities,
    make_agreement: Callable[..., bytes],
    schema: LinkageSchema,
) -> None:
    """Runs of an older data directory (run ID = batch upload ID, no batch_id column) are
    taken over on start-up, and a waiting one still runs when the custodian uploads."""
    pki = identities.pki
    tls = ServerTls(pki.server_cert, pki.server_key, pki.ca_cert)
    data = tmp_path / "data"
    req_rows, cus_rows = shared_rows()

    server = start_server(data, "127.0.0.1:0", tls)
    with LinkageClient(f"127.0.0.1:{server.port}", "requester", identities.tls("requester")) as c:
        project = c.create_project(make_agreement()).project_id
        batch = c.upload(project, encodings_file(tmp_path / "r.bin", req_rows, schema.sha256))
    server.stop(grace=1)
    db = sqlite3.connect(data / "blindlink.db")
    with db:
        db.execute("UPDATE runs SET run_id = batch_id")
        db.execute("ALTER TABLE runs DROP COLUMN batch_id")
    db.close()

    server = start_server(data, "127.0.0.1:0", tls)
    address = f"127.0.0.1:{server.port}"
    try:
        with (
            LinkageClient(address, "requester", identities.tls("requester")) as requester,
            LinkageClient(address, "custodian", identities.tls("custodian")) as custodian,
        ):
            assert [r.run_id for r in requester.status(project).runs] == [batch.upload_id]
            custodian.upload(project, encodings_file(tmp_path / "c.bin", cus_rows, schema.sha256))
            assert requester.wait(project, batch.upload_id).state == pb.RUN_STATE_DONE
            assert list(requester.release(project, batch.upload_id).own_rows) == list(range(10))
    finally:
        server.stop(grace=1)


def test_deleting_a_project_while_an_upload_streams_ends_the_upload_cleanly(
    address: str,
    identities: Identities,
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    make_agreement: Callable[..., bytes],
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    project = requester.create_project(make_agreement()).project_id
    rows = random_rows(20, 31)
    payload = rows.tobytes()
    halfway = threading.Event()
    deleted = threading.Event()

    def stream() -> Iterator[pb.UploadRequest]:
        yield header_for(project, rows, schema.sha256)
        yield pb.UploadRequest(encodings=payload[: len(payload) // 2])
        halfway.set()
        deleted.wait(10)
        yield pb.UploadRequest(encodings=payload[len(payload) // 2 :])

    def delete() -> None:
        halfway.wait(10)
        # Once the server has taken the header in and is storing the stream.
        wait_until(lambda: any(server.store.staged_dir.iterdir()), every=0.01)
        custodian.delete(project)
        deleted.set()

    deleter = threading.Thread(target=delete)
    deleter.start()
    with pytest.raises(grpc.RpcError) as err:
        raw_upload(address, identities, stream())  # type: ignore[arg-type]
    deleter.join()
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "deleted while this upload streamed" in err.value.details()
    assert list(server.store.encodings_dir.iterdir()) == []
    assert list(server.store.incoming_dir.iterdir()) == []
    assert list(server.store.staged_dir.iterdir()) == []


def test_kept_uploads_expire_and_go_with_their_project(server: RunningServer, project: str) -> None:
    staged = server.store.staged_dir
    fresh, old, orphan = (
        staged / f"{project}.requester.{'a' * 64}",
        staged / f"{project}.custodian.{'b' * 64}",
        staged / f"{'c' * 64}.requester.{'d' * 64}",
    )
    for path in (fresh, old, orphan):
        path.write_bytes(b"\0" * 200)
    day_ago = time.time() - STAGED_TTL_S - 60
    os.utime(old, (day_ago, day_ago))
    server.store.remove_expired_staged()
    assert sorted(staged.iterdir()) == [fresh]


def test_a_changed_state_is_named() -> None:
    before = (["INSERT a", "INSERT b"], {"x.bin": b"1", "y.bin": b"2"})
    after = (["INSERT a", "INSERT c"], {"x.bin": b"9", "z.bin": b"3"})
    text = state_changes(before, after)
    assert "rows gone ['INSERT b'], rows new ['INSERT c']" in text
    assert "files gone ['y.bin'], new ['z.bin'], changed ['x.bin']" in text
    assert_unchanged(before, (list(before[0]), dict(before[1])))
    with pytest.raises(AssertionError, match=r"rows gone \['INSERT b'\]"):
        assert_unchanged(before, after)


def test_state_leaves_out_only_the_audit_checkpoint_in_writing(server: RunningServer) -> None:
    data_dir = server.store.data_dir
    before = state(server)
    in_writing = data_dir / f"{CHECKPOINT_NAME}.partial"
    in_writing.write_bytes(b"{}")
    assert state(server) == before
    in_writing.unlink()
    stray = data_dir / "stray.partial"
    stray.write_bytes(b"{}")
    assert state_changes(before, state(server)).endswith("new ['stray.partial'], changed []")
    stray.unlink()
