"""Every release-policy rule of the agreement, once where it allows and once where it refuses,
through the real server over gRPC with mutual TLS. A refusal names the rule, changes nothing
and is recorded in the audit log."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import Identities
from support.calls import header_for, run_project, secure_channel, shared_rows
from support.encodings import encodings_file, random_rows
from support.server_state import assert_unchanged, audit, state
from support.waiting import wait_until

from blindlink._generated import linkage_pb2 as pb
from blindlink._generated import linkage_pb2_grpc as pb_grpc
from blindlink.agreement.document import format_timestamp
from blindlink.agreement.model import (
    Agreement,
    PartyInfo,
    agreement_from_document,
    new_agreement_document,
)
from blindlink.agreement.policy import PolicyViolation, run_threshold
from blindlink.agreement.signing import SignedAgreement, parse_signed
from blindlink.client.linkage_client import LinkageClient, ServerError
from blindlink.encoding.schema import LinkageSchema
from blindlink.server.app import RunningServer

Agreements = Callable[..., bytes]
DENIED = grpc.StatusCode.PERMISSION_DENIED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def expect_refusal(
    server: RunningServer,
    project: str,
    call: Callable[[], object],
    code: grpc.StatusCode,
    rule: str,
) -> str:
    """Make a call that the agreement refuses: check its status, that its message names `rule`,
    that it changed nothing, and that exactly one request_refused entry for `rule` was logged."""
    logged_before = len(audit(server, project))
    before = state(server)
    with pytest.raises(ServerError) as err:
        call()
    assert err.value.code == code, err.value.details
    assert err.value.details.startswith(f"{rule}:"), err.value.details
    new = audit(server, project)[logged_before:]
    assert [(e.kind, e.details.get("rule")) for e in new] == [("request_refused", rule)]
    assert_unchanged(before, state(server))
    return err.value.details


def encodings(tmp_path: Path, rows: np.ndarray, schema: LinkageSchema) -> Path:
    return encodings_file(tmp_path / f"{uuid.uuid4().hex}.bin", rows, schema.sha256)


def upload(
    client: LinkageClient,
    project: str,
    rows: np.ndarray,
    schema: LinkageSchema,
    tmp_path: Path,
    threshold: float = 0.0,
) -> pb.UploadReceipt:
    return client.upload(project, encodings(tmp_path, rows, schema), threshold=threshold)


def run_summary(client: LinkageClient, project: str, run_id: str) -> pb.RunSummary:
    return next(r for r in client.status(project).runs if r.run_id == run_id)


def flipped(row: np.ndarray, bits: int, seed: int) -> np.ndarray:
    """A copy of an encoding with `bits` distinct bits flipped."""
    flat = np.unpackbits(row)
    flat[np.random.default_rng(seed).choice(flat.size, bits, replace=False)] ^= 1
    return np.packbits(flat)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    x, y = np.unpackbits(a).astype(bool), np.unpackbits(b).astype(bool)
    return 2 * int((x & y).sum()) / int(x.sum() + y.sum())


def signed_document(
    identities: Identities, schema: LinkageSchema, valid_from: datetime, valid_until: datetime
) -> bytes:
    """A signed agreement with a validity window of any length (make_agreement counts days)."""
    document = new_agreement_document(
        reference=f"window {uuid.uuid4().hex}",
        requester=identities.party("requester"),
        custodian=identities.party("custodian"),
        schema_sha256=schema.sha256,
        bit_length=schema.bit_length,
        hardening=[],
        valid_from=valid_from,
    )
    document["limits"]["valid_until"] = format_timestamp(valid_until)
    signed = SignedAgreement(agreement_from_document(document), {})
    for role in ("requester", "custodian"):
        signed = identities.sign(signed, role)
    return signed.to_bytes()


PAIRS = [(i, 19 - i) for i in range(10)]  # _shared_rows: requester i is custodian 19 - i


# --- release kinds (test_server_api covers requester own_rows/nothing, custodian
# --- count/pairs/own_rows) --------------------------------------------------------------------


def test_requester_pairs_and_custodian_nothing(
    requester: LinkageClient,
    custodian: LinkageClient,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    agreement = make_agreement(requester_release="pairs", custodian_release="nothing")
    project, run_id = run_project(requester, custodian, agreement, schema, tmp_path)
    pairs = requester.release(project, run_id)
    assert pairs.kind == pb.RELEASE_KIND_PAIRS
    assert pairs.match_count == 10
    assert sorted(zip(pairs.own_rows, pairs.other_rows, strict=True)) == PAIRS
    nothing = custodian.release(project, run_id)
    assert nothing.kind == pb.RELEASE_KIND_NOTHING
    assert (nothing.match_count, nothing.withheld_count) == (0, 0)
    assert (list(nothing.own_rows), list(nothing.other_rows)) == ([], [])
    hidden = run_summary(custodian, project, run_id)
    assert (hidden.counts_visible, hidden.match_count) == (False, 0)
    shown = run_summary(requester, project, run_id)
    assert (shown.counts_visible, shown.match_count) == (True, 10)


def test_count_for_both_parties(
    requester: LinkageClient,
    custodian: LinkageClient,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    agreement = make_agreement(requester_release="count", custodian_release="count")
    project, run_id = run_project(requester, custodian, agreement, schema, tmp_path)
    for client in (requester, custodian):
        release = client.release(project, run_id)
        assert release.kind == pb.RELEASE_KIND_COUNT
        assert release.match_count == 10
        assert (list(release.own_rows), list(release.other_rows)) == ([], [])


# --- matching.decision: the threshold of a run ----------------------------------------------

FIXED = {"threshold": 0.9, "threshold_floor": 0.7, "hardening": []}
BEFORE_DECISION = Path(__file__).parent / "data" / "agreement-before-decision.json"  # 0.85, 0.75


def _agreement(**settings: Any) -> Agreement:
    parties = {
        role: PartyInfo(role, letter.lower() * 64)
        for role, letter in (("requester", "A"), ("custodian", "B"))
    }
    return agreement_from_document(
        new_agreement_document(
            reference="run thresholds",
            requester=parties["requester"],
            custodian=parties["custodian"],
            schema_sha256="0" * 64,
            bit_length=1024,
            **settings,
        )
    )


# (agreement settings, party, requested threshold) -> the run's threshold, or the rule refused
RUN_THRESHOLDS = [
    (FIXED, "requester", 0.0, 0.9),
    (FIXED, "requester", 0.7, 0.7),
    (FIXED, "requester", 0.95, 0.95),
    (FIXED, "requester", 1.0, 1.0),
    (FIXED, "custodian", 0.0, 0.9),
    (FIXED, "requester", 0.69, "matching.decision.threshold_floor"),
    (FIXED, "requester", 1.5, "matching.decision.threshold"),
    (FIXED, "requester", -0.8, "matching.decision.threshold"),
    (FIXED, "custodian", 0.9, "matching.decision.threshold"),
    ({}, "requester", 0.0, 0.0),
    ({}, "custodian", 0.0, 0.0),
    ({"hardening": [{"kind": "diffusion", "t": 3}]}, "requester", 0.0, 0.0),
    ({}, "requester", 0.8, "matching.decision"),
    ({"threshold_bounds": (0.5, 0.9)}, "requester", 0.6, "matching.decision"),
    ({}, "custodian", 0.9, "matching.decision"),
]


@pytest.mark.parametrize(("settings", "party", "requested", "expected"), RUN_THRESHOLDS)
def test_run_threshold(
    settings: dict[str, Any], party: str, requested: float, expected: float | str
) -> None:
    agreement = _agreement(**settings)
    if isinstance(expected, float):
        assert run_threshold(agreement, party, requested) == expected
        return
    with pytest.raises(PolicyViolation) as refused:
        run_threshold(agreement, party, requested)
    assert refused.value.rule == expected
    if expected == "matching.decision":
        assert refused.value.message == (
            "the agreement calibrates each run's threshold; a batch cannot choose one"
        )


@pytest.mark.parametrize(
    ("party", "requested", "expected"),
    [
        ("requester", 0.0, 0.85),
        ("requester", 0.75, 0.75),
        ("requester", 0.74, "matching.threshold_floor"),
        ("custodian", 0.9, "matching.threshold"),
    ],
)
def test_run_threshold_names_the_keys_of_an_agreement_written_before_decision(
    party: str, requested: float, expected: float | str
) -> None:
    agreement = agreement_from_document(json.loads(BEFORE_DECISION.read_text()))
    if isinstance(expected, float):
        assert run_threshold(agreement, party, requested) == expected
        return
    with pytest.raises(PolicyViolation) as refused:
        run_threshold(agreement, party, requested)
    assert refused.value.rule == expected


def _near_copies() -> tuple[np.ndarray, np.ndarray]:
    """Requester rows 0-4 have custodian copies with Dice about 0.8 (rows 10-14)."""
    requester_rows = random_rows(10, 30)
    copies = np.stack([flipped(requester_rows[i], 200, 100 + i) for i in range(5)])
    custodian_rows = np.concatenate([random_rows(10, 31), copies])
    similarities = [dice(requester_rows[i], copies[i]) for i in range(5)]
    assert all(0.76 < s < 0.86 for s in similarities), similarities
    return requester_rows, custodian_rows


def test_requester_threshold_at_or_above_the_floor_is_used_by_its_run(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    project = requester.create_project(
        make_agreement(threshold=0.9, threshold_floor=0.7)
    ).project_id
    requester_rows, custodian_rows = _near_copies()
    upload(custodian, project, custodian_rows, schema, tmp_path)
    # requested threshold (0: the agreement's) -> (run threshold, released rows)
    expected = {
        0.7: (0.7, list(range(5))),
        0.75: (0.75, list(range(5))),
        0.0: (0.9, []),
        0.95: (0.95, []),
    }
    runs = {
        threshold: upload(
            requester, project, requester_rows, schema, tmp_path, threshold=threshold
        ).run_id
        for threshold in expected
    }
    for threshold, run_id in runs.items():
        used, rows = expected[threshold]
        assert requester.wait(project, run_id).state == pb.RUN_STATE_DONE
        assert run_summary(requester, project, run_id).threshold == pytest.approx(used)
        assert list(requester.release(project, run_id).own_rows) == rows
    started = {
        e.details["run_id"]: e.details["threshold"]
        for e in audit(server, project)
        if e.kind == "run_started"
    }
    assert started == {run_id: pytest.approx(expected[t][0]) for t, run_id in runs.items()}


@pytest.mark.parametrize(
    ("threshold", "rule"),
    [
        (0.69, "matching.decision.threshold_floor"),
        (0.1, "matching.decision.threshold_floor"),
        (1.5, "matching.decision.threshold"),
        (-0.8, "matching.decision.threshold"),
    ],
)
def test_requester_threshold_below_the_floor_or_out_of_range_is_refused(
    requester: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
    threshold: float,
    rule: str,
) -> None:
    project = requester.create_project(
        make_agreement(threshold=0.9, threshold_floor=0.7)
    ).project_id
    path = encodings(tmp_path, random_rows(5, 32), schema)
    expect_refusal(
        server,
        project,
        lambda: requester.upload(project, path, threshold=threshold),
        PRECONDITION,
        rule,
    )
    assert requester.status(project).runs == []


def test_custodian_upload_with_a_threshold_is_refused(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    project = requester.create_project(
        make_agreement(threshold=0.9, threshold_floor=0.7)
    ).project_id
    path = encodings(tmp_path, random_rows(5, 33), schema)
    expect_refusal(
        server,
        project,
        lambda: custodian.upload(project, path, threshold=0.9),
        PRECONDITION,
        "matching.decision.threshold",
    )
    assert custodian.upload(project, path).upload_id


def test_batch_threshold_is_refused_when_runs_calibrate_theirs(
    requester: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    project = requester.create_project(make_agreement()).project_id
    path = encodings(tmp_path, random_rows(5, 34), schema)
    details = expect_refusal(
        server,
        project,
        lambda: requester.upload(project, path, threshold=0.8),
        PRECONDITION,
        "matching.decision",
    )
    assert "calibrates each run's threshold" in details
    assert requester.status(project).runs == []


# --- release.ambiguity_margin ----------------------------------------------------------------


def test_ambiguity_margin_withholds_a_match_with_a_close_rival(
    requester: LinkageClient,
    custodian: LinkageClient,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    # Requester row 0 has two custodian candidates: an identical copy (row 10) and a copy with
    # a few bits flipped (row 11). Requester row 1 has one: an identical copy (row 12).
    requester_rows = random_rows(8, 40)
    rival = flipped(requester_rows[0], 12, 41)
    custodian_rows = np.concatenate(
        [random_rows(10, 42), requester_rows[0:1], rival[None, :], requester_rows[1:2]]
    )
    gap = 1 - dice(requester_rows[0], rival)
    assert 0.005 < gap < 0.05
    outcomes = {}
    for margin in (0.0, gap / 2, min(1.0, gap * 3)):
        agreement = make_agreement(
            reference=f"margin {margin}", ambiguity_margin=margin, custodian_release="count"
        )
        project = requester.create_project(agreement).project_id
        upload(custodian, project, custodian_rows, schema, tmp_path)
        run_id = upload(requester, project, requester_rows, schema, tmp_path).run_id
        assert requester.wait(project, run_id).state == pb.RUN_STATE_DONE
        mine, theirs = requester.release(project, run_id), custodian.release(project, run_id)
        summary = run_summary(requester, project, run_id)
        outcomes[margin] = (
            list(mine.own_rows),
            mine.match_count,
            mine.withheld_count,
            theirs.match_count,
            theirs.withheld_count,
            summary.match_count,
            summary.withheld_count,
        )
    released_both = ([0, 1], 2, 0, 2, 0, 2, 0)
    assert outcomes[0.0] == released_both
    assert outcomes[gap / 2] == released_both
    assert outcomes[min(1.0, gap * 3)] == ([1], 1, 1, 1, 1, 1, 1)


def test_ambiguity_margin_withholds_from_pairs_too(
    requester: LinkageClient,
    custodian: LinkageClient,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    # Custodian row 0 has two requester candidates this time: requester rows 3 and 4.
    custodian_rows = random_rows(6, 43)
    requester_rows = np.concatenate(
        [
            random_rows(3, 44),
            custodian_rows[0:1],
            flipped(custodian_rows[0], 12, 45)[None, :],
            custodian_rows[5:6],
        ]
    )
    agreement = make_agreement(
        ambiguity_margin=0.1, requester_release="pairs", custodian_release="pairs"
    )
    project = requester.create_project(agreement).project_id
    upload(custodian, project, custodian_rows, schema, tmp_path)
    run_id = upload(requester, project, requester_rows, schema, tmp_path).run_id
    assert requester.wait(project, run_id).state == pb.RUN_STATE_DONE
    mine = requester.release(project, run_id)
    assert list(zip(mine.own_rows, mine.other_rows, strict=True)) == [(5, 5)]
    assert (mine.match_count, mine.withheld_count) == (1, 1)
    theirs = custodian.release(project, run_id)
    assert list(zip(theirs.own_rows, theirs.other_rows, strict=True)) == [(5, 5)]


# --- limits ----------------------------------------------------------------------------------


def test_max_records_per_upload(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    project = requester.create_project(make_agreement(max_records_per_upload=10)).project_id
    too_many = encodings(tmp_path, random_rows(11, 50), schema)
    details = expect_refusal(
        server,
        project,
        lambda: requester.upload(project, too_many),
        PRECONDITION,
        "limits.max_records_per_upload",
    )
    assert "11 records" in details
    expect_refusal(
        server,
        project,
        lambda: custodian.upload(project, too_many),
        PRECONDITION,
        "limits.max_records_per_upload",
    )
    assert upload(requester, project, random_rows(10, 51), schema, tmp_path).run_id
    assert upload(custodian, project, random_rows(10, 52), schema, tmp_path).upload_id


def test_max_uploads_per_period(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    project = requester.create_project(make_agreement(max_uploads_per_period=2)).project_id
    for seed in (53, 54):
        assert upload(requester, project, random_rows(3, seed), schema, tmp_path).run_id
    third = encodings(tmp_path, random_rows(3, 55), schema)
    details = expect_refusal(
        server,
        project,
        lambda: requester.upload(project, third),
        PRECONDITION,
        "limits.max_uploads_per_period",
    )
    assert "limit of 2" in details
    assert len(requester.status(project).runs) == 2
    # The limit is per party: the custodian's first upload is still allowed.
    assert custodian.upload(project, third).upload_id


def test_max_records_per_period_in_a_rolling_period(
    requester: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    project = requester.create_project(
        make_agreement(max_records_per_period=10, period_seconds=2)
    ).project_id
    upload(requester, project, random_rows(6, 56), schema, tmp_path)
    last = upload(requester, project, random_rows(4, 57), schema, tmp_path)
    committed = time.time()
    one_more = encodings(tmp_path, random_rows(1, 58), schema)
    details = expect_refusal(
        server,
        project,
        lambda: requester.upload(project, one_more),
        PRECONDITION,
        "limits.max_records_per_period",
    )
    assert "11 records" in details
    assert last.run_id
    # Once the period has passed since those uploads, the limit applies afresh.
    time.sleep(max(0.0, committed + 2.1 - time.time()))
    assert upload(requester, project, random_rows(10, 59), schema, tmp_path).run_id
    expect_refusal(
        server,
        project,
        lambda: requester.upload(project, one_more),
        PRECONDITION,
        "limits.max_records_per_period",
    )


def test_concurrent_uploads_cannot_exceed_max_uploads_per_period(
    address: str,
    identities: Identities,
    requester: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    schema: LinkageSchema,
) -> None:
    """Two uploads whose streams are open at the same time must not both pass a limit of one
    upload per period (the limit must be enforced where the upload is committed)."""
    project = requester.create_project(make_agreement(max_uploads_per_period=1)).project_id
    go = threading.Event()

    def messages(rows: np.ndarray) -> Iterator[pb.UploadRequest]:
        yield header_for(project, rows, schema.sha256)
        go.wait(10)
        yield pb.UploadRequest(encodings=rows.tobytes())

    outcomes = []
    with secure_channel(address, identities, "requester") as channel:
        stub = pb_grpc.LinkageStub(channel)
        calls = [stub.Upload.future(messages(random_rows(4, 60 + i))) for i in range(2)]
        time.sleep(0.5)  # both headers have reached the server
        go.set()
        for call in calls:
            try:
                call.result(timeout=10)
                outcomes.append("accepted")
            except grpc.RpcError as exc:
                outcomes.append(exc.code().name)
    assert sorted(outcomes) == ["FAILED_PRECONDITION", "accepted"]
    assert len(server.store.uploads(project, "requester")) == 1


def test_uploads_still_streaming_hold_their_quota_from_the_header_on(
    address: str,
    identities: Identities,
    requester: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    schema: LinkageSchema,
) -> None:
    """Four uploads open at once (the most one certificate may have) under a limit of one per
    period: three are refused as soon as their headers arrive, before any of their data is
    staged on the server."""
    project = requester.create_project(make_agreement(max_uploads_per_period=1)).project_id
    go = threading.Event()

    def messages(rows: np.ndarray) -> Iterator[pb.UploadRequest]:
        yield header_for(project, rows, schema.sha256)
        go.wait(10)
        yield pb.UploadRequest(encodings=rows.tobytes())

    with secure_channel(address, identities, "requester") as channel:
        stub = pb_grpc.LinkageStub(channel)
        calls = [stub.Upload.future(messages(random_rows(4, 80 + i))) for i in range(4)]
        assert wait_until(lambda: sum(call.done() for call in calls) == 3)
        refused = [call for call in calls if call.done()]
        assert {call.exception().code() for call in refused} == {
            grpc.StatusCode.FAILED_PRECONDITION
        }
        assert all(
            "limits.max_uploads_per_period" in call.exception().details() for call in refused
        )
        go.set()
        (streaming,) = [call for call in calls if call not in refused]
        assert streaming.result(timeout=10).run_id
    assert len(server.store.uploads(project, "requester")) == 1


# --- limits.valid_from / limits.valid_until --------------------------------------------------


@pytest.mark.parametrize(
    ("window", "rule", "words"),
    [
        ({"valid_from_days": 1, "valid_days": 365}, "limits.valid_from", "not valid before"),
        ({"valid_from_days": -2, "valid_days": 1}, "limits.valid_until", "expired"),
    ],
    ids=["not yet valid", "expired"],
)
def test_agreement_outside_its_validity_creates_no_project(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    window: dict[str, int],
    rule: str,
    words: str,
) -> None:
    agreement = make_agreement(
        valid_from=datetime.now(UTC) + timedelta(days=window["valid_from_days"]),
        valid_days=window["valid_days"],
    )
    project = parse_signed(agreement).agreement.project_id
    for client in (requester, custodian):
        details = expect_refusal(
            server, project, lambda c=client: c.create_project(agreement), PRECONDITION, rule
        )
        assert words in details
    # The same agreement valid from now creates its project.
    assert requester.create_project(make_agreement(reference="valid now")).project_id


def test_agreement_that_expired_after_the_run_refuses_releases(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    identities: Identities,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    until = now + timedelta(seconds=3)
    agreement = signed_document(identities, schema, now - timedelta(days=1), until)
    project, run_id = run_project(requester, custodian, agreement, schema, tmp_path)
    assert datetime.now(UTC) < until, "the run took longer than the validity window"
    assert list(requester.release(project, run_id).own_rows) == list(range(10))
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds() + 0.05))
    for client in (requester, custodian):
        expect_refusal(
            server,
            project,
            lambda c=client: c.release(project, run_id),
            PRECONDITION,
            "limits.valid_until",
        )


# --- release.custodian_approval --------------------------------------------------------------


def test_release_needs_the_custodians_approval(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    project, run_id = run_project(
        requester, custodian, make_agreement(custodian_approval=True), schema, tmp_path
    )
    for client in (requester, custodian):
        details = expect_refusal(
            server,
            project,
            lambda c=client: c.release(project, run_id),
            PRECONDITION,
            "release.custodian_approval",
        )
        assert "not approved" in details
    counts = run_summary(custodian, project, run_id)
    assert (counts.counts_visible, counts.match_count, counts.approved) == (True, 10, False)
    expect_refusal(
        server,
        project,
        lambda: requester.approve(project, run_id),
        DENIED,
        "release.custodian_approval",
    )
    assert not run_summary(custodian, project, run_id).approved
    approved = custodian.approve(project, run_id)
    assert (approved.approved, approved.match_count) == (True, 10)
    assert run_summary(requester, project, run_id).approved
    assert list(requester.release(project, run_id).own_rows) == list(range(10))
    assert custodian.release(project, run_id).match_count == 10
    kinds = [e.kind for e in audit(server, project)]
    assert kinds.index("run_approved") < kinds.index("release_fetched")


def test_requester_sees_no_counts_before_the_custodian_approves(
    requester: LinkageClient,
    custodian: LinkageClient,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    """With approval required, the requester's status must not show what its release (here the
    count) would: otherwise GetStatus releases the count that GetRelease refuses."""
    agreement = make_agreement(custodian_approval=True, requester_release="count")
    project, run_id = run_project(requester, custodian, agreement, schema, tmp_path)
    before = run_summary(requester, project, run_id)
    assert (before.counts_visible, before.match_count) == (False, 0)
    custodian.approve(project, run_id)
    after = run_summary(requester, project, run_id)
    assert (after.counts_visible, after.match_count) == (True, 10)


def test_approve_is_refused_when_the_agreement_needs_no_approval(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    project, run_id = run_project(requester, custodian, make_agreement(), schema, tmp_path)
    expect_refusal(
        server,
        project,
        lambda: custodian.approve(project, run_id),
        PRECONDITION,
        "release.custodian_approval",
    )
    assert not run_summary(custodian, project, run_id).approved
    assert list(requester.release(project, run_id).own_rows) == list(range(10))


# --- retention -------------------------------------------------------------------------------


def _batch_id(server: RunningServer, project: str, run_id: str) -> str:
    run = server.store.run(project, run_id)
    assert run is not None
    return run.batch_id


@pytest.mark.parametrize("custodian_release", ["count", "nothing"])
def test_batch_encodings_deleted_once_every_granted_party_fetched(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
    custodian_release: str,
) -> None:
    agreement = make_agreement(
        delete_encodings_after_release=True, custodian_release=custodian_release
    )
    project, run_id = run_project(requester, custodian, agreement, schema, tmp_path)
    batch_id = _batch_id(server, project, run_id)
    assert batch_id != run_id
    batch = server.store.encodings_dir / f"{batch_id}.bin"
    custodian_file = server.store.live_custodian_upload(project).path
    assert batch.exists()
    requester.release(project, run_id)
    assert batch.exists() == (custodian_release == "count")
    custodian.release(project, run_id)
    assert not batch.exists()
    assert custodian_file.exists()
    deleted = [e.details for e in audit(server, project) if e.kind == "data_deleted"]
    assert deleted == [
        {
            "what": "encodings",
            "upload_id": batch_id,
            "party": "requester",
            "reason": "retention.delete_encodings_after_release",
        }
    ]
    # The results stay fetchable.
    assert list(requester.release(project, run_id).own_rows) == list(range(10))


def test_batch_encodings_kept_when_the_agreement_says_so(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    agreement = make_agreement(delete_encodings_after_release=False)
    project, run_id = run_project(requester, custodian, agreement, schema, tmp_path)
    requester.release(project, run_id)
    custodian.release(project, run_id)
    assert (server.store.encodings_dir / f"{_batch_id(server, project, run_id)}.bin").exists()
    assert not [e for e in audit(server, project) if e.kind == "data_deleted"]


def test_encodings_ttl_deletes_encodings_and_later_batches_fail(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    agreement = make_agreement(encodings_ttl_seconds=1, delete_encodings_after_release=False)
    project, run_id = run_project(requester, custodian, agreement, schema, tmp_path)
    assert len(list(server.store.encodings_dir.iterdir())) == 2
    assert wait_until(lambda: not list(server.store.encodings_dir.iterdir()))
    deleted = [e.details for e in audit(server, project) if e.kind == "data_deleted"]
    assert sorted((d["what"], d["party"], d["reason"]) for d in deleted) == [
        ("encodings", "custodian", "retention.encodings_ttl_seconds"),
        ("encodings", "requester", "retention.encodings_ttl_seconds"),
    ]
    # The results outlive the encodings.
    assert list(requester.release(project, run_id).own_rows) == list(range(10))
    # A batch uploaded now has nothing to be matched against: its run fails, saying why.
    late = upload(requester, project, random_rows(5, 63), schema, tmp_path).run_id
    wait_until(
        lambda: run_summary(requester, project, late).state == pb.RUN_STATE_FAILED, every=0.05
    )
    summary = run_summary(requester, project, late)
    assert summary.state == pb.RUN_STATE_FAILED, summary
    assert "retention" in summary.message


def test_results_ttl_deletes_results_and_refuses_releases(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    agreement = make_agreement(results_ttl_seconds=1, delete_encodings_after_release=False)
    project, run_id = run_project(requester, custodian, agreement, schema, tmp_path)
    assert list(requester.release(project, run_id).own_rows) == list(range(10))

    def results_deleted() -> bool:
        return any(
            e.kind == "data_deleted" and e.details.get("what") == "results"
            for e in audit(server, project)
        )

    assert wait_until(results_deleted)
    for client in (requester, custodian):
        expect_refusal(
            server,
            project,
            lambda c=client: c.release(project, run_id),
            PRECONDITION,
            "retention.results_ttl_seconds",
        )
    assert server.store.matches(run_id) == ([], [])


def test_shared_rows_premise() -> None:
    requester_rows, custodian_rows = shared_rows()
    assert all((custodian_rows[j] == requester_rows[i]).all() for i, j in PAIRS)
