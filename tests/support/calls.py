"""Calls to a test server: raw gRPC calls with a party's certificate, and a whole project run
through the client."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import numpy as np
from conftest import Identities

from blindlink._generated import linkage_pb2 as pb
from blindlink._generated import linkage_pb2_grpc as pb_grpc
from blindlink.client.linkage_client import LinkageClient
from blindlink.encoding.schema import LinkageSchema
from blindlink.security.tls import channel_credentials
from support.encodings import encodings_file, random_rows


def secure_channel(address: str, identities: Identities, role: str) -> grpc.Channel:
    tls = identities.tls(role)
    return grpc.secure_channel(address, channel_credentials(tls.ca, tls.cert, tls.key))


def raw_upload(
    address: str, identities: Identities, messages: list[pb.UploadRequest], role: str = "requester"
) -> pb.UploadReceipt:
    with secure_channel(address, identities, role) as channel:
        return pb_grpc.LinkageStub(channel).Upload(iter(messages))


def header_for(
    project_id: str, rows: np.ndarray, schema_hash: str, **changes: object
) -> pb.UploadRequest:
    header = pb.UploadHeader(
        project_id=project_id,
        count=len(rows),
        bit_length=rows.shape[1] * 8,
        schema_sha256=schema_hash,
        content_sha256=hashlib.sha256(rows.tobytes()).digest(),
    )
    for name, value in changes.items():
        setattr(header, name, value)
    return pb.UploadRequest(header=header)


def shared_rows() -> tuple[np.ndarray, np.ndarray]:
    """Requester rows 0-9 appear, in reverse, as custodian rows 10-19; the rest are distinct."""
    requester_rows = random_rows(20, 10)
    custodian_rows = np.concatenate([random_rows(10, 11), requester_rows[9::-1]])
    return requester_rows, custodian_rows


def run_project(
    requester: LinkageClient,
    custodian: LinkageClient,
    agreement: bytes,
    schema: LinkageSchema,
    tmp_path: Path,
) -> tuple[str, str]:
    """Create a project, upload both sides, wait for the run: (project ID, run ID)."""
    project = requester.create_project(agreement).project_id
    req_rows, cus_rows = shared_rows()
    custodian.upload(project, encodings_file(tmp_path / "c.bin", cus_rows, schema.sha256))
    run_id = requester.upload(
        project, encodings_file(tmp_path / "r.bin", req_rows, schema.sha256)
    ).run_id
    assert requester.wait(project, run_id).state == pb.RUN_STATE_DONE
    return project, run_id
