"""The Linkage gRPC service: projects, uploads, runs and releases, as the agreement allows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from blindlink._generated import linkage_pb2 as pb
from blindlink._generated import linkage_pb2_grpc as pb_grpc
from blindlink.agreement.model import ROLES, Agreement, ReleaseKind, parse_agreement
from blindlink.encoding.encodings_file import write_encodings
from blindlink.errors import AgreementError, EncodingsFileError
from blindlink.server.identity import caller_role
from blindlink.server.runs import RunProgress, RunQueue
from blindlink.server.status import already_exists, invalid, not_found, precondition
from blindlink.store.sqlite import DONE, FAILED, AlreadyExists, Store, UploadRecord

MAX_AGREEMENT_BYTES = 1 << 20
WATCH_INTERVAL_S = 0.2

_RUN_STATES = {
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


class LinkageServicer(pb_grpc.LinkageServicer):
    def __init__(self, store: Store, runs: RunQueue) -> None:
        self._store = store
        self._runs = runs

    def _agreement(self, project_id: str) -> Agreement:
        raw = self._store.agreement(project_id)
        if raw is None:
            raise not_found(f"no project {project_id!r} on this server")
        return parse_agreement(raw)

    def CreateProject(
        self, request: pb.CreateProjectRequest, context: grpc.ServicerContext
    ) -> pb.Project:
        if len(request.agreement) > MAX_AGREEMENT_BYTES:
            raise invalid(f"agreement is larger than {MAX_AGREEMENT_BYTES} bytes")
        try:
            agreement = parse_agreement(request.agreement)
        except AgreementError as exc:
            raise invalid(f"invalid agreement: {exc}") from None
        try:
            self._store.create_project(agreement.project_id, agreement.canonical_bytes)
        except AlreadyExists:
            raise already_exists(
                f"project {agreement.project_id} exists already (same "
                "agreement); change agreement.reference for a new one"
            ) from None
        return pb.Project(project_id=agreement.project_id, agreement=agreement.canonical_bytes)

    def Upload(
        self, request_iterator: Iterator[pb.UploadRequest], context: grpc.ServicerContext
    ) -> pb.UploadReceipt:
        role = caller_role(context)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise invalid("the first message of an upload must be its header")
        header = first.header
        agreement = self._agreement(header.project_id)
        _check_header(header, agreement)
        if role in self._store.uploads(header.project_id):
            raise already_exists(
                f"the {role} has already uploaded to this project; uploads cannot be replaced"
            )
        incoming = self._store.incoming_path()
        try:
            written = write_encodings(
                incoming,
                header.bit_length,
                header.schema_sha256,
                _payload_chunks(request_iterator, header),
            )
        except EncodingsFileError as exc:
            raise invalid(str(exc)) from None
        finally:
            Path(f"{incoming}.partial").unlink(missing_ok=True)
        if written.content_sha256 != header.content_sha256:
            incoming.unlink(missing_ok=True)
            raise invalid(
                "content hash does not match the header's content_sha256; the data "
                "was altered or truncated in transit"
            )
        record = UploadRecord(
            header.project_id,
            role,
            header.count,
            header.bit_length,
            written.content_sha256,
            incoming,
        )
        try:
            complete = self._store.commit_upload(record, ROLES)
        except AlreadyExists:
            raise already_exists(f"the {role} has already uploaded to this project") from None
        if complete:
            self._runs.enqueue(header.project_id)
        return pb.UploadReceipt(
            project_id=header.project_id,
            party=role,
            count=header.count,
            content_sha256=written.content_sha256,
        )

    def WatchRun(
        self, request: pb.WatchRunRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.RunProgress]:
        role = caller_role(context)
        self._agreement(request.project_id)
        last = None
        while context.is_active():
            if self._store.agreement(request.project_id) is None:
                raise not_found("the project was deleted")
            progress = self._progress(request.project_id, role)
            if progress != last:
                yield progress
                last = progress
            if progress.state in (pb.RUN_STATE_DONE, pb.RUN_STATE_FAILED):
                return
            time.sleep(WATCH_INTERVAL_S)

    def _progress(self, project_id: str, role: str) -> pb.RunProgress:
        progress = self._runs.progress(project_id)
        if progress is None:
            missing = [r for r in ROLES if r not in self._store.uploads(project_id)]
            return pb.RunProgress(
                state=pb.RUN_STATE_WAITING_FOR_UPLOADS, message="waiting for: " + ", ".join(missing)
            )
        return _to_message(progress)

    def GetRelease(
        self, request: pb.GetReleaseRequest, context: grpc.ServicerContext
    ) -> pb.Release:
        role = caller_role(context)
        agreement = self._agreement(request.project_id)
        run = self._store.run(request.project_id)
        if run is None or run.state != DONE:
            state = run.state if run else "waiting for uploads"
            raise precondition(f"nothing to release: the run is {state}")
        kind = agreement.release[role]
        release = pb.Release(project_id=request.project_id, party=role, kind=_RELEASE_KINDS[kind])
        if kind is ReleaseKind.NOTHING:
            return release
        requester_rows, custodian_rows = self._store.matches(request.project_id)
        release.match_count = len(requester_rows)
        own, other = (
            (requester_rows, custodian_rows)
            if role == "requester"
            else (custodian_rows, requester_rows)
        )
        if kind is ReleaseKind.OWN_ROWS:
            release.own_rows.extend(sorted(own))
        elif kind is ReleaseKind.PAIRS:
            release.own_rows.extend(own)
            release.other_rows.extend(other)
        return release

    def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.ServicerContext
    ) -> pb.ProjectStatus:
        role = caller_role(context)
        self._agreement(request.project_id)
        uploads = self._store.uploads(request.project_id)
        status = pb.ProjectStatus(
            project_id=request.project_id, run=self._progress(request.project_id, role)
        )
        for party in ROLES:
            # The other party's record count is not the caller's to know.
            count = uploads[party].count if party == role and party in uploads else 0
            status.uploads.add(party=party, uploaded=party in uploads, count=count)
        return status

    def DeleteProject(
        self, request: pb.DeleteProjectRequest, context: grpc.ServicerContext
    ) -> pb.DeleteProjectResponse:
        caller_role(context)
        if not self._store.delete_project(request.project_id):
            raise not_found(f"no project {request.project_id!r} on this server")
        self._runs.forget(request.project_id)
        return pb.DeleteProjectResponse()


def _check_header(header: pb.UploadHeader, agreement: Agreement) -> None:
    if header.bit_length != agreement.bit_length:
        raise invalid(
            f"encodings have {header.bit_length} bits; the agreement says {agreement.bit_length}"
        )
    if header.schema_sha256 != agreement.schema_sha256:
        raise precondition(
            "encodings were made with a different linkage schema than the "
            f"agreement names ({header.schema_sha256[:12]}… vs "
            f"{agreement.schema_sha256[:12]}…)"
        )
    if header.count == 0:
        raise invalid("an upload must hold at least one encoding")
    if header.count > agreement.max_records_per_upload:
        raise precondition(
            f"{header.count} records exceed the agreement's limit of "
            f"{agreement.max_records_per_upload} per upload"
        )
    if len(header.content_sha256) != 32:
        raise invalid("content_sha256 must be 32 bytes")


def _payload_chunks(
    requests: Iterator[pb.UploadRequest], header: pb.UploadHeader
) -> Iterator[bytes]:
    """The encoding bytes of an upload stream, refusing anything but exactly `count` records."""
    expected = header.count * header.bit_length // 8
    received = 0
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
        raise EncodingsFileError(
            f"the stream ended after {received} of {expected} bytes "
            f"({header.count} encodings announced); nothing was stored"
        )


def _to_message(progress: RunProgress) -> pb.RunProgress:
    return pb.RunProgress(
        state=_RUN_STATES[progress.state],
        stage=progress.stage,
        done=progress.done,
        total=progress.total,
        message=progress.message,
    )
