"""Calling the linkage server as one party."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TypeVar

import grpc

from blindlink._generated import linkage_pb2 as pb
from blindlink._generated import linkage_pb2_grpc as pb_grpc
from blindlink.agreement.document import purpose_text_problem
from blindlink.encoding.encodings_file import iter_payload_chunks, verify_payload
from blindlink.errors import BlindlinkError
from blindlink.security.tls import channel_credentials
from blindlink.server.identity import PARTY_METADATA_KEY
from blindlink.server.status import RETRY_METADATA_KEY

CHUNK_BYTES = 1 << 20
POLL_INTERVAL_S = 1.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# A call the server refused because it is busy is made again after a pause, doubled each time.
BUSY_PATIENCE_S = 60.0
BUSY_FIRST_PAUSE_S = 0.1
BUSY_MAX_PAUSE_S = 1.0
# An upload whose connection broke off is continued this many times in all, after a pause that
# doubles each time (1, 2, 4, 8 s: long enough for a server restart).
RESUME_ATTEMPTS = 5
RESUME_FIRST_PAUSE_S = 1.0

T = TypeVar("T")


class ServerError(BlindlinkError):
    """The server refused or failed a call; carries the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"server answered {code.name}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class ClientTls:
    """The CA that signed the server's certificate, and this party's certificate and key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_dir(cls, directory: Path, party: str) -> ClientTls:
        """The layout `blindlink pki init` writes: ca.pem, PARTY.pem, PARTY.key."""
        return cls(directory / "ca.pem", directory / f"{party}.pem", directory / f"{party}.key")


class LinkageClient:
    """One party's connection to a linkage server (TLS unless `tls` is None)."""

    def __init__(self, address: str, party: str, tls: ClientTls | None) -> None:
        self.party = party
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        self._channel = (
            grpc.secure_channel(address, channel_credentials(tls.ca, tls.cert, tls.key), options)
            if tls
            else grpc.insecure_channel(address, options)
        )
        self._stub = pb_grpc.LinkageStub(self._channel)
        # Only a development server without TLS reads the role from here.
        self._metadata = ((PARTY_METADATA_KEY, party),)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> LinkageClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[[], T]) -> T:
        """Make the call; again, after a growing pause, while the server is busy (for at most
        BUSY_PATIENCE_S)."""
        give_up = time.monotonic() + BUSY_PATIENCE_S
        pause = BUSY_FIRST_PAUSE_S
        while True:
            try:
                return fn()
            except grpc.RpcError as exc:
                if not _busy(exc) or time.monotonic() + pause > give_up:
                    raise ServerError(exc.code(), exc.details() or "") from None
            time.sleep(pause * random.uniform(0.5, 1.0))
            pause = min(2 * pause, BUSY_MAX_PAUSE_S)

    def create_project(self, signed_agreement: bytes) -> pb.Project:
        return self._call(
            lambda: self._stub.CreateProject(
                pb.CreateProjectRequest(signed_agreement=signed_agreement), metadata=self._metadata
            )
        )

    def upload_offset(self, project_id: str, content_sha256: bytes) -> int:
        """Bytes the server keeps of this party's interrupted upload of that content (0: none)."""
        request = pb.UploadOffsetRequest(project_id=project_id, content_sha256=content_sha256)
        return self._call(
            lambda: self._stub.GetUploadOffset(request, metadata=self._metadata)
        ).offset

    def upload(
        self,
        project_id: str,
        encodings: Path,
        threshold: float = 0.0,
        progress: Callable[[int], None] = lambda n: None,
        *,
        purpose: str | None = None,
        restart: bool = False,
    ) -> pb.UploadReceipt:
        """Upload an encodings file after checking its integrity; `progress` gets byte counts.
        `purpose`: a requester batch's declared purpose, where the agreement asks for one.

        An upload the server kept when an earlier attempt broke off continues where it stopped
        (`restart`: start afresh instead), and a connection lost while streaming is retried the
        same way, up to RESUME_ATTEMPTS times."""
        problem = purpose and purpose_text_problem(purpose)
        if problem:
            raise BlindlinkError(f"purpose: the batch's purpose {problem}")
        first = _upload_header(project_id, encodings)
        first.threshold, first.purpose = threshold, purpose or ""

        def send(resumed: pb.UploadHeader, chunks: Iterator[bytes]) -> pb.UploadReceipt:
            messages = chain(
                [pb.UploadRequest(header=resumed)], (pb.UploadRequest(encodings=c) for c in chunks)
            )
            return self._stub.Upload(messages, metadata=self._metadata)

        return self._resumable(encodings, first, send, progress, restart)

    def update(
        self,
        project_id: str,
        rows: int,
        append: Path | None = None,
        remove: Sequence[int] = (),
        progress: Callable[[int], None] = lambda n: None,
        *,
        restart: bool = False,
    ) -> pb.UpdateReceipt:
        """The custodian's update: append the records of the encodings file `append` (streamed
        as an upload is, continued where an interrupted attempt stopped) and remove rows
        `remove`, in one commit. `rows`: the custodian's row count the update was made for (its
        ID map's); the server refuses the update when it has another."""

        def send(appended: pb.UploadHeader | None, chunks: Iterator[bytes]) -> pb.UpdateReceipt:
            header = pb.UpdateHeader(
                project_id=project_id, append=appended, remove_rows=remove, rows=rows
            )
            messages = chain(
                [pb.UpdateRequest(header=header)], (pb.UpdateRequest(encodings=c) for c in chunks)
            )
            return self._stub.UpdateCustodian(messages, metadata=self._metadata)

        if append is None:
            return self._call(lambda: send(None, iter(())))
        return self._resumable(append, _upload_header(project_id, append), send, progress, restart)

    def _resumable(
        self,
        encodings: Path,
        first: pb.UploadHeader,
        send: Callable[[pb.UploadHeader, Iterator[bytes]], T],
        progress: Callable[[int], None],
        restart: bool,
    ) -> T:
        """Stream the file `encodings` described by `first` through `send` (the header, then
        the chunks from its offset). A stream the server kept when an earlier attempt broke off
        continues where it stopped (`restart`: start afresh instead), and a connection lost
        while streaming is retried the same way, up to RESUME_ATTEMPTS times."""
        reported = 0

        def chunks(offset: int) -> Iterator[bytes]:
            nonlocal reported
            position = offset
            for chunk in iter_payload_chunks(encodings, CHUNK_BYTES, offset):
                yield chunk
                position += len(chunk)
                if position > reported:
                    progress(position - reported)
                    reported = position

        def attempt(fresh: bool) -> T:
            offset = 0 if fresh else self.upload_offset(first.project_id, first.content_sha256)
            resumed = pb.UploadHeader()
            resumed.CopyFrom(first)
            resumed.offset = offset
            return self._call(lambda: send(resumed, chunks(offset)))

        fresh = restart
        pause = RESUME_FIRST_PAUSE_S
        for _ in range(RESUME_ATTEMPTS - 1):
            try:
                return attempt(fresh)
            except ServerError as exc:
                if exc.code != grpc.StatusCode.UNAVAILABLE:
                    raise
            fresh = False  # what arrived of this attempt is kept: continue it
            time.sleep(pause)
            pause *= 2
        return attempt(fresh)

    def watch(self, project_id: str, run_id: str) -> Iterator[pb.RunProgress]:
        try:
            yield from self._stub.WatchRun(
                pb.WatchRunRequest(project_id=project_id, run_id=run_id), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise ServerError(exc.code(), exc.details() or "") from None

    def wait(self, project_id: str, run_id: str) -> pb.RunProgress:
        """Block until the run is done or failed; its last progress. Watches the run, or polls
        its status when the server has no room for another watcher."""
        last = pb.RunProgress()
        try:
            for last in self.watch(project_id, run_id):  # noqa: B007 - the last one is wanted
                pass
        except ServerError as exc:
            if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            return self.poll(project_id, run_id)
        return last

    def poll(
        self, project_id: str, run_id: str, every_s: float = POLL_INTERVAL_S
    ) -> pb.RunProgress:
        """Ask for the project's status until the run is done or failed; its final state."""
        while True:
            run = next((r for r in self.status(project_id).runs if r.run_id == run_id), None)
            if run is None:
                raise ServerError(grpc.StatusCode.NOT_FOUND, f"no run {run_id} in the project")
            if run.state in (pb.RUN_STATE_DONE, pb.RUN_STATE_FAILED):
                return pb.RunProgress(state=run.state, message=run.message, run_id=run_id)
            time.sleep(every_s)

    def approve(self, project_id: str, run_id: str) -> pb.RunSummary:
        return self._call(
            lambda: self._stub.ApproveRun(
                pb.ApproveRunRequest(project_id=project_id, run_id=run_id), metadata=self._metadata
            )
        )

    def release(self, project_id: str, run_id: str) -> pb.Release:
        return self._call(
            lambda: self._stub.GetRelease(
                pb.GetReleaseRequest(project_id=project_id, run_id=run_id), metadata=self._metadata
            )
        )

    def status(self, project_id: str) -> pb.ProjectStatus:
        return self._call(
            lambda: self._stub.GetStatus(
                pb.GetStatusRequest(project_id=project_id), metadata=self._metadata
            )
        )

    def delete(self, project_id: str) -> pb.DeleteProjectResponse:
        return self._call(
            lambda: self._stub.DeleteProject(
                pb.DeleteProjectRequest(project_id=project_id), metadata=self._metadata
            )
        )


def _upload_header(project_id: str, encodings: Path) -> pb.UploadHeader:
    """The header announcing an encodings file's records, once the file is checked whole."""
    header = verify_payload(encodings)
    return pb.UploadHeader(
        project_id=project_id,
        count=header.count,
        bit_length=header.bit_length,
        schema_sha256=header.schema_sha256,
        content_sha256=header.content_sha256,
    )


def _busy(error: grpc.RpcError) -> bool:
    """True if the server refused the call for now only: it is busy."""
    # grpc-stubs types the items as _Metadatum objects; grpc gives (key, value) tuples.
    trailing: tuple[tuple[str, str | bytes], ...] = error.trailing_metadata() or ()  # type: ignore[assignment]
    busy = any(key == RETRY_METADATA_KEY for key, _ in trailing)
    return busy and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
