"""The Linkage gRPC service: projects, uploads, runs and releases, as the agreement allows."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np

from blindlink._generated import linkage_pb2 as pb
from blindlink._generated import linkage_pb2_grpc as pb_grpc
from blindlink.agreement.document import ROLES, ReleaseKind
from blindlink.agreement.model import Agreement, parse_agreement
from blindlink.agreement.policy import (
    PastUpload,
    PolicyViolation,
    batch_purpose,
    check_approval,
    check_release,
    check_update,
    check_upload,
    check_validity,
    counts_visible,
    released_rows,
    run_threshold,
)
from blindlink.agreement.signing import parse_signed
from blindlink.audit.chain import AuditEntry
from blindlink.audit.commitments import rows_sha256
from blindlink.encoding.encodings_file import (
    EncodingsHeader,
    finish_staged,
    stage_payload,
    staged_bytes,
)
from blindlink.errors import AgreementError, EncodingsFileError
from blindlink.index.build import InvalidUpdate, check_removals
from blindlink.index.custodian import CustodianIndex
from blindlink.index.layout import IndexUnusable
from blindlink.matching.decision import ESTIMATED, DecisionSummary, Estimates, PairStatus
from blindlink.security.tls import peer_fingerprint
from blindlink.server.identity import PartyResolver
from blindlink.server.logs import current_call
from blindlink.server.refusals import RefusalLimiter
from blindlink.server.retention import release_complete
from blindlink.server.runs import RunQueue
from blindlink.server.status import (
    ServiceError,
    already_exists,
    denied,
    invalid,
    not_found,
    precondition,
)
from blindlink.store.sqlite import (
    DONE,
    FAILED,
    AlreadyExists,
    Altered,
    Deleted,
    NotFound,
    RunRecord,
    Store,
    UploadRecord,
)

log = logging.getLogger("blindlink.server")

MAX_AGREEMENT_BYTES = 1 << 20
# A run's watch wakes when a run changes state or stage; at the latest after this, to show
# progress within a stage and to notice a client gone or the server stopping.
WATCH_INTERVAL_S = 0.2
PROGRESS_PARTS = 1000  # a run's progress is shown to parties in thousandths

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")  # project IDs (the agreement's hash), schema hashes
_RUN_ID = re.compile(r"[0-9a-f]{32}")  # a requester batch's upload ID

_RUN_STATES = {
    "waiting": pb.RUN_STATE_WAITING_FOR_UPLOADS,
    "queued": pb.RUN_STATE_QUEUED,
    "running": pb.RUN_STATE_RUNNING,
    DONE: pb.RUN_STATE_DONE,
    FAILED: pb.RUN_STATE_FAILED,
}
_RELEASE_KINDS = {
    ReleaseKind.OWN_ROWS: pb.RELEASE_KIND_OWN_ROWS,
    ReleaseKind.PAIRS: pb.RELEASE_KIND_PAIRS,
    ReleaseKind.COUNT: pb.RELEASE_KIND_COUNT,
    ReleaseKind.NOTHING: pb.RELEASE_KIND_NOTHING,
}


def receipt_json(entry: AuditEntry) -> str:
    return json.dumps(entry.to_json(), sort_keys=True)


def _method() -> str:
    """The method being handled, e.g. "GetRelease", for audit entries of refused requests."""
    call = current_call.get()
    return call.method if call else ""


class LinkageServicer(pb_grpc.LinkageServicer):
    def __init__(
        self,
        store: Store,
        runs: RunQueue,
        resolver: PartyResolver,
        server_public_key: str,
        stopping: threading.Event,
        max_watchers: int,
    ) -> None:
        self._store = store
        self._runs = runs
        self._resolver = resolver
        self._server_key = server_public_key
        self._stopping = stopping
        # Every open watch holds one of the streaming calls' threads: past this many, watchers
        # are told to poll GetStatus instead, so that uploads always find one.
        self._watchers = threading.BoundedSemaphore(max_watchers)
        self._max_watchers = max_watchers
        self._refusals = RefusalLimiter()
        # Uploads streaming now: token -> (project, party, started at, records).
        self._reservations: dict[object, tuple[str, str, float, int]] = {}
        self._reservations_lock = threading.Lock()
        self._streaming: set[Path] = set()  # kept uploads a stream is writing now
        self._updating: set[str] = set()  # projects whose custodian update is being made

    # Helpers shared by the handlers

    def _project(self, project_id: str, context: grpc.ServicerContext) -> tuple[Agreement, str]:
        """The project's agreement and the caller's role in it."""
        if not _SHA256_HEX.fullmatch(project_id):
            raise invalid("project_id must be the agreement's SHA-256 as 64 lowercase hex digits")
        try:
            raw = self._store.agreement(project_id)
        except Altered as exc:
            raise ServiceError(
                grpc.StatusCode.DATA_LOSS,
                f"{exc}; the server refuses to act on it (the operator runs `blindlink admin "
                "verify`)",
            ) from None
        if raw is None:
            raise not_found(f"no project {project_id} on this server")
        agreement = parse_agreement(raw)
        try:
            return agreement, self._resolver.role(context, agreement)
        except ServiceError as exc:
            details: dict[str, object] = {"rule": "parties", "method": _method()}
            fingerprint = peer_fingerprint(context)
            if fingerprint is not None:  # who tried: the certificate, never more
                details["certificate_sha256"] = fingerprint
            self._record_refusal(project_id, "", details, fingerprint or "")
            raise exc

    def _refuse(self, project_id: str, role: str, violation: PolicyViolation) -> ServiceError:
        """Log a refusal in the audit log; the caller raises the returned error."""
        details: dict[str, object] = {"rule": violation.rule, "method": _method()}
        self._record_refusal(project_id, role, details, f"{project_id}/{role}")
        if violation.invalid:
            return invalid(str(violation))
        return denied(str(violation)) if violation.denied else precondition(str(violation))

    def _record_refusal(
        self, project_id: str, party: str, details: dict[str, object], caller: str
    ) -> None:
        """A refusal into the audit log, unless the caller has been refused too often lately:
        then it is counted, and the caller's next logged refusal says how many were left out."""
        left_out = self._refusals.admit(caller)
        if left_out is None:
            return
        if left_out:
            details["refusals_left_out"] = left_out
        self._store.record_refusal(project_id, party, details)

    def _run(self, project_id: str, run_id: str) -> RunRecord:
        if not _RUN_ID.fullmatch(run_id):
            raise invalid("run_id must be a run ID as the upload receipt gave it (32 hex digits)")
        run = self._store.run(project_id, run_id)
        if run is None:
            raise not_found(f"no run {run_id} in this project")
        return run

    # Handlers

    def CreateProject(
        self, request: pb.CreateProjectRequest, context: grpc.ServicerContext
    ) -> pb.Project:
        if len(request.signed_agreement) > MAX_AGREEMENT_BYTES:
            raise invalid(f"agreement is larger than {MAX_AGREEMENT_BYTES} bytes")
        try:
            signed = parse_signed(request.signed_agreement)
        except AgreementError as exc:
            raise invalid(f"invalid agreement: {exc}") from None
        except RecursionError:
            raise invalid("invalid agreement: JSON nested too deeply") from None
        agreement = signed.agreement
        role = self._resolver.role(context, agreement)
        problems = self._resolver.signature_problems(signed)
        if problems:
            raise denied(
                "signatures: the server creates a project only when the holders of both "
                "certificates the agreement names signed exactly this agreement with those "
                "certificates' keys: " + "; ".join(problems)
            )
        try:
            check_validity(agreement, datetime.now(UTC))
        except PolicyViolation as violation:
            raise self._refuse(agreement.project_id, role, violation) from None
        try:
            entry = self._store.create_project(
                agreement.project_id,
                agreement.canonical_bytes,
                {
                    "agreement_sha256": agreement.project_id,
                    "reference": agreement.reference,
                    "signers": {r: agreement.parties[r].certificate_sha256 for r in ROLES},
                },
                role,
            )
            self._resolver.parties.add(agreement)
        except AlreadyExists:
            raise already_exists(
                f"project {agreement.project_id} exists already (same "
                "agreement); change agreement.reference for a new one"
            ) from None
        except Deleted:
            raise self._refuse(
                agreement.project_id,
                role,
                PolicyViolation(
                    "project",
                    "this agreement's project was deleted and stays deleted; both parties sign "
                    "a new agreement (a new reference) for a new project",
                ),
            ) from None
        return pb.Project(
            project_id=agreement.project_id,
            agreement=agreement.canonical_bytes,
            server_public_key=self._server_key,
            receipt=receipt_json(entry),
        )

    def Upload(
        self, request_iterator: Iterator[pb.UploadRequest], context: grpc.ServicerContext
    ) -> pb.UploadReceipt:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise invalid("the first message of an upload must be its header")
        header = first.header
        agreement, role = self._project(header.project_id, context)
        _check_header(header, agreement)

        def check_limits(past: list[tuple[float, int]]) -> None:
            check_upload(agreement, header.count, [PastUpload(*p) for p in past], datetime.now(UTC))

        try:
            purpose = batch_purpose(agreement, role, header.purpose)
            threshold = run_threshold(agreement, role, header.threshold)
            # Checked before the data is streamed, and again when it is committed; a repeated
            # batch is not a new upload (the commit checks that it really is one).
            repeat = role == "requester" and self._store.repeats_live_batch(
                header.project_id, header.content_sha256, threshold, purpose
            )
            reservation = None
            if not repeat:
                reservation = self._reserve(header.project_id, role, header.count, check_limits)
        except PolicyViolation as violation:
            raise self._refuse(header.project_id, role, violation) from None
        try:
            return self._receive(request_iterator, header, role, threshold, purpose, check_limits)
        finally:
            if reservation is not None:
                with self._reservations_lock:
                    self._reservations.pop(reservation)

    def _reserve(
        self,
        project_id: str,
        role: str,
        count: int,
        check_limits: Callable[[list[tuple[float, int]]], None],
    ) -> object:
        """Hold the party's quota for an upload from its header on: the limits count the
        party's committed uploads and those still streaming, so that concurrent uploads cannot
        stage more than the agreement allows before the commit refuses them."""
        with self._reservations_lock:
            streaming = [
                (at, count)
                for (project, party, at, count) in self._reservations.values()
                if (project, party) == (project_id, role)
            ]
            committed = self._store.past_uploads(project_id, role)
            check_limits(committed + streaming)
            token = object()
            self._reservations[token] = (project_id, role, time.time(), count)
            return token

    def _receive(
        self,
        request_iterator: Iterator[pb.UploadRequest],
        header: pb.UploadHeader,
        role: str,
        threshold: float,
        purpose: str | None,
        check_limits: Callable[[list[tuple[float, int]]], None],
    ) -> pb.UploadReceipt:
        """Stream the upload's data to a file, check it and commit it."""
        if role == "custodian" and self._store.live_custodian_upload(header.project_id):
            raise already_exists(
                "the custodian's encodings are on the server already; they cannot be replaced"
            )
        incoming = self._store.incoming_path()
        try:
            written = self._stage(request_iterator, header, role, incoming)
            commit = self._store.commit_upload(
                header.project_id,
                role,
                incoming,
                header.count,
                header.bit_length,
                written.content_sha256,
                threshold,
                check_limits,
                purpose=purpose,
            )
        except PolicyViolation as violation:
            raise self._refuse(header.project_id, role, violation) from None
        except AlreadyExists:
            raise already_exists("the custodian has already uploaded to this project") from None
        except NotFound:
            raise not_found(
                f"project {header.project_id} was deleted while this upload streamed; nothing "
                "was stored"
            ) from None
        finally:
            incoming.unlink(missing_ok=True)
        if role == "custodian":
            self._runs.build_index(header.project_id)
        for run_id in commit.queued_runs:
            self._runs.enqueue(header.project_id, run_id)
        return pb.UploadReceipt(
            project_id=header.project_id,
            party=role,
            count=header.count,
            content_sha256=written.content_sha256,
            upload_id=commit.upload_id,
            run_id=commit.run_id,
            receipt=receipt_json(commit.receipt),
        )

    def _stage(
        self,
        request_iterator: Iterator[pb.UploadRequest] | Iterator[pb.UpdateRequest],
        header: pb.UploadHeader,
        role: str,
        incoming: Path,
    ) -> EncodingsHeader:
        """Receive the stream into the party's kept upload (continuing it at header.offset) and,
        once complete and matching its content hash, move it to `incoming`. A stream that
        breaks off leaves what arrived kept, to be continued; bad content is discarded."""
        staged = self._store.staged_path(header.project_id, role, header.content_sha256)
        with self._reservations_lock:
            if staged in self._streaming:
                raise ServiceError(
                    grpc.StatusCode.ABORTED,
                    "an upload of the same content by this party is streaming now; wait for it "
                    "to finish or fail, then continue it",
                )
            self._streaming.add(staged)
        try:
            if header.offset == 0:
                with self._reservations_lock:
                    streaming = set(self._streaming)
                self._store.discard_staged(header.project_id, role, streaming)
            elif header.offset > staged_bytes(staged):
                raise precondition(
                    f"cannot continue this upload at byte {header.offset}: the server keeps "
                    f"{staged_bytes(staged)} bytes of it (ask GetUploadOffset)"
                )
            try:
                digest = stage_payload(
                    staged, header.offset, _payload_chunks(request_iterator, header)
                )
            except EncodingsFileError as exc:
                if not isinstance(exc, StreamEnded):
                    staged.unlink(missing_ok=True)  # bad content: nothing to continue
                elif not staged_bytes(staged):
                    staged.unlink(missing_ok=True)
                raise invalid(str(exc)) from None
            except BaseException:  # the stream broke off or was aborted: what arrived is kept
                if not staged_bytes(staged):
                    staged.unlink(missing_ok=True)
                raise
            try:
                written = finish_staged(
                    staged, incoming, header.bit_length, header.schema_sha256, digest
                )
            except EncodingsFileError as exc:
                raise invalid(str(exc)) from None
            except FileNotFoundError:
                raise not_found(
                    f"project {header.project_id} was deleted while this upload streamed; "
                    "nothing was stored"
                ) from None
            finally:
                staged.unlink(missing_ok=True)
            if written.content_sha256 != header.content_sha256:
                raise invalid(
                    "content hash does not match the header's content_sha256; the data was "
                    "altered or truncated in transit, and nothing was kept: upload it afresh"
                )
            return written
        finally:
            with self._reservations_lock:
                self._streaming.discard(staged)

    def GetUploadOffset(
        self, request: pb.UploadOffsetRequest, context: grpc.ServicerContext
    ) -> pb.UploadOffset:
        _, role = self._project(request.project_id, context)
        if len(request.content_sha256) != 32:
            raise invalid("content_sha256 must be 32 bytes")
        staged = self._store.staged_path(request.project_id, role, request.content_sha256)
        return pb.UploadOffset(offset=staged_bytes(staged))

    def UpdateCustodian(
        self, request_iterator: Iterator[pb.UpdateRequest], context: grpc.ServicerContext
    ) -> pb.UpdateReceipt:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise invalid("the first message of an update must be its header")
        header = first.header
        agreement, role = self._project(header.project_id, context)
        try:
            check_update(agreement, role, datetime.now(UTC))
        except PolicyViolation as violation:
            raise self._refuse(header.project_id, role, violation) from None
        append = header.append if header.HasField("append") else None
        if append is None and not header.remove_rows:
            raise invalid("an update appends records or removes rows; this one does neither")
        if append is not None:
            _check_append(header.project_id, append, agreement)
        reference = self._store.live_custodian_upload(header.project_id)
        if reference is None:
            raise precondition(
                "the custodian has no encodings on this server to update; upload them first"
            )
        with self._reservations_lock:
            if header.project_id in self._updating:
                raise ServiceError(
                    grpc.StatusCode.ABORTED,
                    "another update of the custodian's records is being made; wait for its "
                    "receipt, then send this one",
                )
            self._updating.add(header.project_id)
        try:
            return self._update(request_iterator, header, append, agreement, reference)
        finally:
            with self._reservations_lock:
                self._updating.discard(header.project_id)

    def _update(
        self,
        request_iterator: Iterator[pb.UpdateRequest],
        header: pb.UpdateHeader,
        append: pb.UploadHeader | None,
        agreement: Agreement,
        reference: UploadRecord,
    ) -> pb.UpdateReceipt:
        """Check the removals, receive the appended records, build the custodian index's next
        version and commit the update; the index version before it is retired once it is, and
        the removed rows are erased from the stored files before the receipt is sent."""
        project_id = header.project_id
        updates = self._store.custodian_updates(reference.upload_id)
        key_count = len(agreement.blocking_keys.keys)  # type: ignore[union-attr]
        indexes = self._runs.indexes
        try:
            parent = indexes.ensure(reference, key_count, updates)
            removed = check_removals(parent.directory, header.remove_rows)
        except InvalidUpdate as exc:
            raise invalid(str(exc)) from None
        except IndexUnusable:
            raise _deleted_meanwhile() from None
        if header.rows != parent.manifest.records:
            raise precondition(
                f"this update was made for {header.rows} custodian rows, but the custodian's "
                f"records have {parent.manifest.records} rows (removed ones included) at version "
                f"{len(updates)}: an update was committed since (this one, if its receipt was "
                "lost?); nothing was changed"
            )
        count = append.count if append is not None else 0

        def check_limits(past: list[tuple[float, int]]) -> None:
            check_upload(agreement, count, [PastUpload(*p) for p in past], datetime.now(UTC))

        version = len(updates) + 1
        incoming = self._store.incoming_path() if append is not None else None
        reservation = None
        try:
            if append is not None and incoming is not None:
                reservation = self._reserve(project_id, "custodian", count, check_limits)
                self._stage(request_iterator, append, "custodian", incoming)
            erased = self._erasure_hashes(reference, removed)
            built = CustodianIndex(indexes.extend(reference, key_count, updates, incoming, removed))
            details = {
                "upload_id": reference.upload_id,
                "version": version,
                "appended": count,
                "removed": len(removed),
                "removed_rows_sha256": rows_sha256(self._store.commitment_key, removed.tolist()),
            }
            if append is not None:
                details["content_sha256"] = append.content_sha256.hex()
            with indexes.lock:  # runs open the new version from the commit on, never the old
                try:
                    entry = self._store.commit_custodian_update(
                        reference, version, incoming, count, removed, check_limits, details, erased
                    )
                except BaseException:
                    indexes.retire(reference.upload_id, version)
                    raise
                indexes.retire(reference.upload_id, version - 1)
        except PolicyViolation as violation:
            raise self._refuse(project_id, "custodian", violation) from None
        except (NotFound, IndexUnusable):
            raise _deleted_meanwhile() from None
        except AlreadyExists:
            raise ServiceError(
                grpc.StatusCode.ABORTED,
                "another update of the custodian's records was committed first; nothing was "
                "changed: check the rows to remove, then send this update again",
            ) from None
        finally:
            if reservation is not None:
                with self._reservations_lock:
                    self._reservations.pop(reservation)
            if incoming is not None:
                incoming.unlink(missing_ok=True)
        self._erase_removed_rows(reference)
        manifest = built.manifest
        return pb.UpdateReceipt(
            project_id=project_id,
            version=version,
            appended=count,
            removed=len(removed),
            first_row=manifest.records - count,
            records=manifest.records - manifest.removed,
            receipt=receipt_json(entry),
        )

    def _erasure_hashes(self, reference: UploadRecord, removed: np.ndarray) -> dict[Path, bytes]:
        try:
            return self._store.erasure_hashes(reference.upload_id, removed)
        except EncodingsFileError as exc:
            log.error("custodian update refused: %s", exc)
            raise ServiceError(
                grpc.StatusCode.DATA_LOSS,
                "the custodian's stored encodings do not match their recorded content hash "
                "(corrupt or altered); nothing was changed: the operator runs `blindlink admin "
                "verify`",
            ) from None

    def _erase_removed_rows(self, reference: UploadRecord) -> None:
        """Erase the rows the update removed; a failure leaves them to the next start (the
        update is committed, and its hashes recorded)."""
        try:
            self._store.erase_removed_rows(reference.upload_id)
        except (OSError, EncodingsFileError) as exc:
            log.error(
                "removed rows of upload %s not erased (the next start erases them): %s",
                reference.upload_id[:12],
                exc,
            )

    def WatchRun(
        self, request: pb.WatchRunRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.RunProgress]:
        self._project(request.project_id, context)
        self._run(request.project_id, request.run_id)
        if not self._watchers.acquire(blocking=False):
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._max_watchers} runs are being watched on this server already; poll "
                "GetStatus instead (blindlink does this by itself)",
            )
        try:
            yield from self._watch(request, context)
        finally:
            self._watchers.release()

    def _watch(
        self, request: pb.WatchRunRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.RunProgress]:
        last = None
        while context.is_active():
            seen = self._runs.changes()
            if self._stopping.is_set():
                raise ServiceError(
                    grpc.StatusCode.UNAVAILABLE,
                    "the server is shutting down; watch the run again once it is back",
                )
            run = self._store.run(request.project_id, request.run_id)
            if run is None:
                raise not_found("the run was deleted")
            progress = self._progress(run)
            if progress != last:
                yield progress
                last = progress
            if progress.state in (pb.RUN_STATE_DONE, pb.RUN_STATE_FAILED):
                return
            self._runs.wait_for_change(seen, WATCH_INTERVAL_S)

    def _progress(self, run: RunRecord) -> pb.RunProgress:
        live = self._runs.progress(run.run_id)
        if live is None or run.state in (DONE, FAILED):
            waiting = "waiting for the custodian's encodings" if run.state == "waiting" else ""
            return pb.RunProgress(
                state=_RUN_STATES[run.state], run_id=run.run_id, message=run.message or waiting
            )
        # Parties see thousandths of the work and the time left: comparisons, or their rate,
        # would tell each the other's record count.
        progress = pb.RunProgress(
            state=_RUN_STATES[live.state], stage=live.stage, run_id=run.run_id
        )
        if live.total:
            progress.done = PROGRESS_PARTS * live.done // live.total
            progress.total = PROGRESS_PARTS
            progress.message = f"about {live.seconds_left:,.0f} s left"
        return progress

    def _summary(self, run: RunRecord, agreement: Agreement, role: str) -> pb.RunSummary:
        summary = pb.RunSummary(
            run_id=run.run_id,
            state=_RUN_STATES[run.state],
            threshold=run.threshold,
            approved=run.approved,
            message=run.message,
        )
        if run.state == DONE and counts_visible(agreement, role, run.approved):
            summary.counts_visible = True
            summary.match_count = run.match_count
            summary.withheld_count = run.withheld_count
            if run.decision is not None:
                summary.decision.CopyFrom(_decision_message(run.decision))
        return summary

    def ApproveRun(
        self, request: pb.ApproveRunRequest, context: grpc.ServicerContext
    ) -> pb.RunSummary:
        agreement, role = self._project(request.project_id, context)
        run = self._run(request.project_id, request.run_id)
        try:
            check_approval(agreement, role, run.state)
        except PolicyViolation as violation:
            raise self._refuse(request.project_id, role, violation) from None
        self._store.approve_run(request.project_id, request.run_id)
        return self._summary(self._run(request.project_id, request.run_id), agreement, role)

    def GetRelease(
        self, request: pb.GetReleaseRequest, context: grpc.ServicerContext
    ) -> pb.Release:
        agreement, role = self._project(request.project_id, context)
        run = self._run(request.project_id, request.run_id)
        try:
            check_release(
                agreement, run.state, run.approved, run.results_deleted, datetime.now(UTC)
            )
        except PolicyViolation as violation:
            raise self._refuse(request.project_id, role, violation) from None
        kind = agreement.release[role]
        release = pb.Release(
            project_id=request.project_id, party=role, run_id=run.run_id, kind=_RELEASE_KINDS[kind]
        )
        rows: tuple[list[int], ...] = ([], [], [], [])
        if kind is not ReleaseKind.NOTHING:
            matches = self._store.matches(run.run_id)
            possible = self._store.matches(run.run_id, PairStatus.POSSIBLE)
            rows = released_rows(agreement, role, matches, possible)
            release.match_count = len(matches[0])
            release.withheld_count = run.withheld_count
            if run.decision is not None:
                release.decision.CopyFrom(_decision_message(run.decision))
        own, other, possible_own, possible_other = rows
        release.own_rows.extend(own)
        release.other_rows.extend(other)
        release.possible_own_rows.extend(possible_own)
        release.possible_other_rows.extend(possible_other)
        entry = self._store.record_release(
            request.project_id,
            run.run_id,
            role,
            {
                "kind": kind.value,
                "matches": release.match_count,
                "possible": release.decision.possible_count,
                "rows": sum(len(r) for r in rows),
                "rows_sha256": rows_sha256(self._store.commitment_key, *rows),
            },
        )
        release.receipt = receipt_json(entry)
        self._apply_release_retention(agreement, request.project_id, run.run_id)
        return release

    def _apply_release_retention(self, agreement: Agreement, project_id: str, run_id: str) -> None:
        run = self._run(project_id, run_id)
        batch = self._store.upload(run.batch_id)
        if (
            agreement.delete_encodings_after_release
            and batch is not None
            and release_complete(agreement, run.fetched_by)
        ):
            self._store.delete_encodings(batch, "retention.delete_encodings_after_release")

    def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.ServicerContext
    ) -> pb.ProjectStatus:
        agreement, role = self._project(request.project_id, context)
        status = pb.ProjectStatus(project_id=request.project_id)
        for party in ROLES:
            uploads = self._store.uploads(request.project_id, party)
            if party == role:
                for upload in uploads:
                    status.uploads.add(
                        party=party, uploaded=True, count=upload.count, upload_id=upload.upload_id
                    )
            if party != role or not uploads:
                # The other party's record counts are not the caller's to know.
                status.uploads.add(party=party, uploaded=bool(uploads))
        for run in self._store.runs(request.project_id):
            status.runs.append(self._summary(run, agreement, role))
        return status

    def DeleteProject(
        self, request: pb.DeleteProjectRequest, context: grpc.ServicerContext
    ) -> pb.DeleteProjectResponse:
        _, role = self._project(request.project_id, context)
        try:
            entry = self._store.delete_project(request.project_id, role, f"deleted by {role}")
        except NotFound:
            raise not_found(f"no project {request.project_id!r} on this server") from None
        return pb.DeleteProjectResponse(receipt=receipt_json(entry))


def _decision_message(summary: DecisionSummary) -> pb.RunDecision:
    decision = pb.RunDecision(
        threshold=summary.threshold, rule=summary.rule, possible_count=summary.possible
    )
    if summary.estimates is not None:
        decision.estimates.CopyFrom(_estimates_message(summary.estimates))
    return decision


def _estimates_message(estimates: Estimates) -> pb.Estimates:
    message = pb.Estimates(**{name: getattr(estimates, name) for name in ESTIMATED})
    for name in ESTIMATED:
        interval = estimates.interval(name)
        if interval is not None:
            getattr(message, f"{name}_interval").CopyFrom(
                pb.Interval(low=interval[0], high=interval[1])
            )
    return message


def _deleted_meanwhile() -> ServiceError:
    return not_found(
        "the custodian's encodings or the project were deleted while this update was made; "
        "nothing was changed"
    )


def _check_append(project_id: str, append: pb.UploadHeader, agreement: Agreement) -> None:
    """An update's appended records' header, checked as an upload's; its project is the
    update's."""
    if append.project_id not in ("", project_id):
        raise invalid("the appended records' header names another project than the update")
    if append.threshold or append.purpose:
        raise invalid("appended custodian records carry no threshold or purpose")
    append.project_id = project_id
    _check_header(append, agreement)


def _check_header(header: pb.UploadHeader, agreement: Agreement) -> None:
    if not _SHA256_HEX.fullmatch(header.schema_sha256):
        raise invalid("schema_sha256 must be a schema's SHA-256 as 64 lowercase hex digits")
    if header.bit_length != agreement.record_bit_length:
        keys = agreement.blocking_keys
        parts = (
            f" ({agreement.bit_length}-bit encoding, {len(keys.keys)} blocking keys; encode "
            "with `blindlink encode --agreement`)"
            if keys
            else ""
        )
        raise invalid(
            f"records have {header.bit_length} bits; the agreement says "
            f"{agreement.record_bit_length}{parts}"
        )
    expected = agreement.encodings_id
    if header.schema_sha256 != expected:
        raise precondition(
            "encodings were made with a different linkage schema, hardening or blocking keys "
            f"than the agreement names ({header.schema_sha256[:12]}… vs {expected[:12]}…); "
            "encode with `blindlink encode --agreement`"
        )
    if header.count == 0:
        raise invalid("an upload must hold at least one encoding")
    if len(header.content_sha256) != 32:
        raise invalid("content_sha256 must be 32 bytes")
    if header.offset > header.count * header.bit_length // 8:
        raise invalid(f"offset {header.offset} lies beyond the upload's {header.count} encodings")


class StreamEnded(EncodingsFileError):
    """An upload stream ended before all its announced records arrived."""


def _payload_chunks(
    requests: Iterator[pb.UploadRequest] | Iterator[pb.UpdateRequest], header: pb.UploadHeader
) -> Iterator[bytes]:
    """The encoding bytes of an upload stream from header.offset on, refusing anything but
    exactly `count` records in all."""
    expected = header.count * header.bit_length // 8
    received = header.offset
    for message in requests:
        if message.WhichOneof("part") != "encodings":
            raise EncodingsFileError("only encoding chunks may follow the upload header")
        received += len(message.encodings)
        if received > expected:
            raise EncodingsFileError(
                f"the stream holds more than the {header.count} encodings its header announced"
            )
        yield message.encodings
    if received != expected:
        kept = (
            f"the server keeps them: upload again to continue from byte {received}"
            if received
            else "nothing was stored"
        )
        raise StreamEnded(
            f"the stream ended after {received} of {expected} bytes ({header.count} "
            f"encodings announced); {kept}"
        )
