"""Calling the linkage server as one party."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc

from blindlink._generated import linkage_pb2 as pb
from blindlink._generated import linkage_pb2_grpc as pb_grpc
from blindlink.encoding.encodings_file import iter_payload_chunks, read_payload
from blindlink.errors import BlindlinkError
from blindlink.server.identity import PARTY_METADATA_KEY

CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

T = TypeVar("T")


class ServerError(BlindlinkError):
    """The server refused or failed a call; carries the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"server answered {code.name}: {details}")
        self.code = code
        self.details = details


class LinkageClient:
    """One party's connection to a linkage server."""

    def __init__(self, address: str, party: str) -> None:
        self.party = party
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = pb_grpc.LinkageStub(self._channel)
        self._metadata = ((PARTY_METADATA_KEY, party),)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> LinkageClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except grpc.RpcError as exc:
            raise ServerError(exc.code(), exc.details() or "") from None

    def create_project(self, agreement: bytes) -> pb.Project:
        return self._call(
            lambda: self._stub.CreateProject(
                pb.CreateProjectRequest(agreement=agreement), metadata=self._metadata
            )
        )

    def upload(
        self, project_id: str, encodings: Path, progress: Callable[[int], None] = lambda n: None
    ) -> pb.UploadReceipt:
        """Upload an encodings file after checking its integrity; `progress` gets byte counts."""
        header, _ = read_payload(encodings)
        first = pb.UploadHeader(
            project_id=project_id,
            count=header.count,
            bit_length=header.bit_length,
            schema_sha256=header.schema_sha256,
            content_sha256=header.content_sha256,
        )

        def messages() -> Iterator[pb.UploadRequest]:
            yield pb.UploadRequest(header=first)
            for chunk in iter_payload_chunks(encodings, CHUNK_BYTES):
                yield pb.UploadRequest(encodings=chunk)
                progress(len(chunk))

        return self._call(lambda: self._stub.Upload(messages(), metadata=self._metadata))

    def watch(self, project_id: str) -> Iterator[pb.RunProgress]:
        try:
            yield from self._stub.WatchRun(
                pb.WatchRunRequest(project_id=project_id), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise ServerError(exc.code(), exc.details() or "") from None

    def release(self, project_id: str) -> pb.Release:
        return self._call(
            lambda: self._stub.GetRelease(
                pb.GetReleaseRequest(project_id=project_id), metadata=self._metadata
            )
        )

    def status(self, project_id: str) -> pb.ProjectStatus:
        return self._call(
            lambda: self._stub.GetStatus(
                pb.GetStatusRequest(project_id=project_id), metadata=self._metadata
            )
        )

    def delete(self, project_id: str) -> None:
        self._call(
            lambda: self._stub.DeleteProject(
                pb.DeleteProjectRequest(project_id=project_id), metadata=self._metadata
            )
        )
