"""Hostile requests: garbage bytes, oversized and mistyped messages, absurd counts, truncated,
idle, slow and shredded upload streams, unicode and control characters in every string field,
path-like IDs, and a property-based fuzz of every handler. Each is answered with a clear status,
the server keeps serving, and the store is unchanged (refusals the audit log records by design
excepted)."""

from __future__ import annotations

import hashlib
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import Identities
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from request_strategies import NASTY_TEXT, Call, Target, calls
from server_process import encodings_file, planted_pairs, signed_agreement

from blindlink._generated import linkage_pb2 as pb
from blindlink._generated import linkage_pb2_grpc as pb_grpc
from blindlink.audit.checkpoint import CHECKPOINT_NAME
from blindlink.client.linkage_client import LinkageClient
from blindlink.encoding.schema import LinkageSchema
from blindlink.security.tls import channel_credentials
from blindlink.server.app import RunningServer, ServerTls, start_server
from blindlink.server.interceptors import StreamLimits

IDLE_S, MAX_S = 1.0, 3.0
SERVICE = "/blindlink.v1.Linkage/"
CODE = grpc.StatusCode
# Statuses a bad request may get; never INTERNAL or UNKNOWN.
CLEAR = {
    CODE.INVALID_ARGUMENT,
    CODE.NOT_FOUND,
    CODE.FAILED_PRECONDITION,
    CODE.PERMISSION_DENIED,
    CODE.ALREADY_EXISTS,
    CODE.RESOURCE_EXHAUSTED,
    CODE.DEADLINE_EXCEEDED,
}
METHOD_KINDS = {
    "CreateProject": "unary_unary",
    "Upload": "stream_unary",
    "WatchRun": "unary_stream",
    "ApproveRun": "unary_unary",
    "GetRelease": "unary_unary",
    "GetStatus": "unary_unary",
    "DeleteProject": "unary_unary",
}


@dataclass
class Env:
    server: RunningServer
    identities: Identities
    target: Target
    channels: dict[str, grpc.Channel]

    @property
    def data_dir(self) -> Path:
        return self.server.store.data_dir

    def stub(self, role: str = "requester") -> pb_grpc.LinkageStub:
        return pb_grpc.LinkageStub(self.channels[role])

    def raw(self, method: str, role: str = "requester") -> Callable:
        """The method as bytes in, bytes out: no serialization on the client."""
        return getattr(self.channels[role], METHOD_KINDS[method])(SERVICE + method)

    def header(self, **changes: object) -> pb.UploadHeader:
        header = pb.UploadHeader(
            project_id=self.target.project_id,
            count=10,
            bit_length=1024,
            schema_sha256=self.target.schema_sha256,
            content_sha256=hashlib.sha256(bytes(1280)).digest(),
        )
        for name, value in changes.items():
            setattr(header, name, value)
        return header


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, identities: Identities, schema: LinkageSchema
) -> Iterator[Env]:
    """A server with short stream limits and a project whose requester batch waits for the
    custodian (so releases and approvals are refused, and nothing can complete)."""
    work = tmp_path_factory.mktemp("hostile")
    pki = identities.pki
    server = start_server(
        work / "data",
        "127.0.0.1:0",
        ServerTls(pki.server_cert, pki.server_key, pki.ca_cert),
        streams=StreamLimits(IDLE_S, MAX_S),
    )
    address = f"127.0.0.1:{server.port}"
    with LinkageClient(address, "requester", identities.tls("requester")) as requester:
        project = requester.create_project(signed_agreement(identities, schema, "hostile"))
        rows, _, _ = planted_pairs(10, 0, seed=3)
        run_id = requester.upload(
            project.project_id, encodings_file(work / "r.bin", rows, schema.sha256)
        ).run_id
    channels = {}
    for role in ("requester", "custodian"):
        tls = identities.tls(role)
        channels[role] = grpc.secure_channel(
            address, channel_credentials(tls.ca, tls.cert, tls.key)
        )
    yield Env(server, identities, Target(project.project_id, run_id, schema.sha256), channels)
    for channel in channels.values():
        channel.close()
    server.stop(grace=1)


def snapshot(data_dir: Path) -> tuple[list[str], dict[str, bytes]]:
    """Every row (but audit entries of refused requests) and every file of the data dir (but the
    audit checkpoint, which names the newest audit entries)."""
    db = sqlite3.connect(data_dir / "blindlink.db")
    rows = [
        line
        for line in db.iterdump()
        if line.startswith("INSERT") and "'request_refused'" not in line
    ]
    db.close()
    files = {
        str(p.relative_to(data_dir)): p.read_bytes()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and not p.name.startswith("blindlink.db") and p.name != CHECKPOINT_NAME
    }
    return rows, files


def serving(env: Env) -> bool:
    reply = health_pb2_grpc.HealthStub(env.channels["requester"]).Check(
        health_pb2.HealthCheckRequest(service="blindlink.v1.Linkage"), timeout=5
    )
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def refused(env: Env, call: Callable[[], object]) -> grpc.RpcError:
    """Make a bad call; check it was refused, the server serves and nothing was stored."""
    before = snapshot(env.data_dir)
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() in CLEAR, (err.value.code(), err.value.details())
    assert err.value.details()
    assert serving(env)
    assert snapshot(env.data_dir) == before
    return err.value


# --- Bytes that are not a valid message ---------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def field(number: int, wire_type: int, payload: bytes) -> bytes:
    return varint(number << 3 | wire_type) + payload


def delimited(number: int, data: bytes) -> bytes:
    return field(number, 2, varint(len(data)) + data)


GARBAGE = {
    "invalid wire type": b"\xff" * 8,
    "length beyond the end": b"\x0a\xff\xff\xff\x0f",
    "truncated varint": b"\x08\x80",
    "field number zero": b"\x02\x01x",
    "string not UTF-8": delimited(1, b"\xc3\x28"),
}


@pytest.mark.parametrize("method", METHOD_KINDS)
@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_bytes_are_invalid_argument(env: Env, method: str, garbage: bytes) -> None:
    call = env.raw(method)
    if METHOD_KINDS[method] == "stream_unary":
        error = refused(env, lambda: call(iter([garbage])))
    elif METHOD_KINDS[method] == "unary_stream":
        error = refused(env, lambda: list(call(garbage)))
    else:
        error = refused(env, lambda: call(garbage))
    assert error.code() == CODE.INVALID_ARGUMENT
    if method != "CreateProject" or garbage != GARBAGE["string not UTF-8"]:
        # (CreateProject's field 1 is bytes: a valid message, refused as an agreement)
        assert "not a valid protobuf message" in error.details()


def test_wrongly_typed_fields_are_refused(env: Env) -> None:
    # A known field with another wire type is kept as an unknown field: the request then lacks
    # it, and is refused for that.
    as_varint = field(1, 0, varint(150))
    assert refused(env, lambda: env.raw("GetStatus")(as_varint)).code() == CODE.INVALID_ARGUMENT
    as_fixed64 = delimited(1, env.target.project_id.encode()) + field(2, 1, bytes(8))
    assert refused(env, lambda: env.raw("GetRelease")(as_fixed64)).code() == CODE.INVALID_ARGUMENT
    header = env.header(count=0).SerializeToString()
    count_as_string = delimited(1, header + delimited(2, b"ten"))
    error = refused(env, lambda: env.raw("Upload")(iter([count_as_string])))
    assert "at least one" in error.details()


def test_oversized_messages_are_refused(env: Env) -> None:
    big = pb.CreateProjectRequest(signed_agreement=b"{" * (2 << 20))
    error = refused(env, lambda: env.stub().CreateProject(big))
    assert error.code() == CODE.INVALID_ARGUMENT and "larger than" in error.details()
    huge = pb.CreateProjectRequest(signed_agreement=b" " * (64 << 20))
    assert refused(env, lambda: env.stub().CreateProject(huge)).code() == CODE.RESOURCE_EXHAUSTED


def test_deeply_nested_agreement_is_invalid_argument(env: Env) -> None:
    nested = pb.CreateProjectRequest(signed_agreement=b"[" * 100_000)
    error = refused(env, lambda: env.stub().CreateProject(nested))
    assert error.code() == CODE.INVALID_ARGUMENT


# --- Absurd values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"count": 2**64 - 1}, CODE.FAILED_PRECONDITION),  # also how -1 arrives in a uint64
        ({"count": 2**63}, CODE.FAILED_PRECONDITION),
        ({"bit_length": 2**32 - 1}, CODE.INVALID_ARGUMENT),
        ({"bit_length": 0}, CODE.INVALID_ARGUMENT),
        ({"threshold": -0.5}, CODE.FAILED_PRECONDITION),
        ({"threshold": math.nan}, CODE.FAILED_PRECONDITION),
        ({"threshold": math.inf}, CODE.FAILED_PRECONDITION),
        ({"threshold": 1e-300}, CODE.FAILED_PRECONDITION),
        ({"content_sha256": b""}, CODE.INVALID_ARGUMENT),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else None,
)
def test_absurd_upload_headers_are_refused(
    env: Env, changes: dict[str, object], code: grpc.StatusCode
) -> None:
    messages = [pb.UploadRequest(header=env.header(**changes)), pb.UploadRequest(encodings=b"x")]
    assert refused(env, lambda: env.stub().Upload(iter(messages))).code() == code


# --- Unicode, control characters and paths in every string field ----------------------------

STRING_FIELDS = [
    ("GetStatus", pb.GetStatusRequest, "project_id"),
    ("DeleteProject", pb.DeleteProjectRequest, "project_id"),
    ("WatchRun", pb.WatchRunRequest, "project_id"),
    ("WatchRun", pb.WatchRunRequest, "run_id"),
    ("ApproveRun", pb.ApproveRunRequest, "project_id"),
    ("ApproveRun", pb.ApproveRunRequest, "run_id"),
    ("GetRelease", pb.GetReleaseRequest, "project_id"),
    ("GetRelease", pb.GetReleaseRequest, "run_id"),
    ("Upload", pb.UploadHeader, "project_id"),
    ("Upload", pb.UploadHeader, "schema_sha256"),
]


@pytest.mark.parametrize(("method", "message", "name"), STRING_FIELDS)
def test_unicode_control_characters_and_paths_in_string_fields(
    env: Env, method: str, message: type, name: str
) -> None:
    for value in NASTY_TEXT:
        if message is pb.UploadHeader:
            request: object = iter([pb.UploadRequest(header=env.header(**{name: value}))])
        else:
            ids = {"project_id": env.target.project_id, "run_id": env.target.run_id, name: value}
            fields = message.DESCRIPTOR.fields_by_name
            request = message(**{k: v for k, v in ids.items() if k in fields})
        call = getattr(env.stub(), method)
        error = refused(env, lambda c=call, r=request: _consume(c(r)))
        assert error.code() == CODE.INVALID_ARGUMENT, (value[:20], error.details())
        if len(value) > 2:
            assert value not in error.details()  # the status does not echo the input


def _consume(result: object) -> object:
    return list(result) if isinstance(result, Iterator) else result


# --- Streams: truncated, idle, slow, shredded --------------------------------------------------


def test_stream_of_only_a_header_is_refused(env: Env) -> None:
    error = refused(env, lambda: env.stub().Upload(iter([pb.UploadRequest(header=env.header())])))
    assert error.code() == CODE.INVALID_ARGUMENT and "ended after 0" in error.details()


def _stalled(first: list[pb.UploadRequest], release: threading.Event) -> Iterator[pb.UploadRequest]:
    yield from first
    release.wait(30)


@pytest.mark.parametrize("sent", ["nothing", "a header", "a header and half the data"])
def test_idle_upload_is_aborted_after_the_idle_timeout(env: Env, sent: str) -> None:
    first = {
        "nothing": [],
        "a header": [pb.UploadRequest(header=env.header())],
        "a header and half the data": [
            pb.UploadRequest(header=env.header()),
            pb.UploadRequest(encodings=bytes(640)),
        ],
    }[sent]
    release = threading.Event()
    started = time.monotonic()
    try:
        error = refused(env, lambda: env.stub().Upload(_stalled(first, release)))
    finally:
        release.set()
    assert error.code() == CODE.DEADLINE_EXCEEDED
    assert "stream_idle_timeout" in error.details()
    assert IDLE_S <= time.monotonic() - started < IDLE_S + 2


def test_slow_upload_is_aborted_after_the_maximum_duration(env: Env) -> None:
    def crawling() -> Iterator[pb.UploadRequest]:
        yield pb.UploadRequest(header=env.header(count=100_000))
        for _ in range(100):  # 64 KiB every 0.4 s: never idle, never done
            time.sleep(0.4)
            yield pb.UploadRequest(encodings=bytes(64 * 1024))

    started = time.monotonic()
    error = refused(env, lambda: env.stub().Upload(crawling()))
    assert error.code() == CODE.DEADLINE_EXCEEDED
    assert "stream_max_duration" in error.details()
    assert MAX_S <= time.monotonic() - started < MAX_S + 2


def test_a_trickle_of_bytes_is_idle(env: Env) -> None:
    """A message every 50 ms that carries one byte keeps the stream busy but sends nothing:
    it is aborted by the idle timeout (which counts bytes, not messages)."""

    def trickle() -> Iterator[pb.UploadRequest]:
        yield pb.UploadRequest(header=env.header())
        for _ in range(200):
            time.sleep(0.05)
            yield pb.UploadRequest(encodings=b"x")

    started = time.monotonic()
    error = refused(env, lambda: env.stub().Upload(trickle()))
    assert error.code() == CODE.DEADLINE_EXCEEDED
    assert "less than 65,536 bytes" in error.details()
    assert IDLE_S <= time.monotonic() - started < IDLE_S + 2


def test_thousands_of_tiny_chunks(env: Env) -> None:
    data = bytes(range(128)) * 10
    header = env.header(content_sha256=hashlib.sha256(data).digest())
    altered = [pb.UploadRequest(header=header)] + [
        pb.UploadRequest(encodings=bytes([b ^ (i == 700)])) for i, b in enumerate(data)
    ]
    error = refused(env, lambda: env.stub().Upload(iter(altered)))
    assert error.code() == CODE.INVALID_ARGUMENT and "content hash" in error.details()
    too_many = [pb.UploadRequest(header=header)] + [pb.UploadRequest(encodings=b"x")] * 5000
    error = refused(env, lambda: env.stub().Upload(iter(too_many)))
    assert error.code() == CODE.INVALID_ARGUMENT and "more than the 10" in error.details()


def test_a_message_larger_than_a_few_mib_is_refused_before_it_is_buffered(env: Env) -> None:
    """Parties send 1 MiB chunks: a 5 MiB one is refused by size, not read and then judged,
    so concurrent streams of huge messages cannot fill the server's memory."""
    huge = [pb.UploadRequest(header=env.header()), pb.UploadRequest(encodings=bytes(5 << 20))]
    error = refused(env, lambda: env.stub().Upload(iter(huge)))
    assert error.code() == CODE.RESOURCE_EXHAUSTED


def test_tiny_chunks_of_a_valid_upload_are_accepted(
    tmp_path: Path, identities: Identities, schema: LinkageSchema
) -> None:
    pki = identities.pki
    server = start_server(
        tmp_path / "data", "127.0.0.1:0", ServerTls(pki.server_cert, pki.server_key, pki.ca_cert)
    )
    try:
        address = f"127.0.0.1:{server.port}"
        with LinkageClient(address, "requester", identities.tls("requester")) as client:
            project = client.create_project(signed_agreement(identities, schema, "tiny"))
        data = bytes(range(128)) * 10
        header = pb.UploadHeader(
            project_id=project.project_id,
            count=10,
            bit_length=1024,
            schema_sha256=schema.sha256,
            content_sha256=hashlib.sha256(data).digest(),
        )
        messages = [pb.UploadRequest(header=header)] + [
            pb.UploadRequest(encodings=data[i : i + 1]) for i in range(len(data))
        ]
        tls = identities.tls("requester")
        with grpc.secure_channel(address, channel_credentials(tls.ca, tls.cert, tls.key)) as ch:
            receipt = pb_grpc.LinkageStub(ch).Upload(iter(messages))
        stored = server.store.upload(receipt.upload_id)
        assert stored is not None and stored.path is not None
        assert stored.path.read_bytes().endswith(data)
    finally:
        server.stop(grace=1)


# --- Property: any request to any handler -------------------------------------------------------

FUZZ_TIMEOUT_S = 5.0


def make_call(env: Env, call: Call) -> None:
    """Make the call; a response stream is read to its first message, then cancelled (the
    real run waits for the custodian forever)."""
    kind = METHOD_KINDS[call.method]
    if isinstance(call.request, bytes):
        method = env.raw(call.method, call.role)
        request = iter([call.request]) if kind == "stream_unary" else call.request
    else:
        method = getattr(env.stub(call.role), call.method)
        request = iter(call.request) if kind == "stream_unary" else call.request
    if kind == "unary_stream":
        responses = method(request, timeout=FUZZ_TIMEOUT_S)
        next(responses, None)
        responses.cancel()
    else:
        method(request, timeout=FUZZ_TIMEOUT_S)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_requests_get_clear_statuses_and_change_nothing(
    env: Env, data: st.DataObject
) -> None:
    call = data.draw(calls(env.target))
    before = snapshot(env.data_dir)
    try:
        make_call(env, call)
    except grpc.RpcError as exc:
        assert exc.code() in CLEAR, (call.method, exc.code(), exc.details())
    assert serving(env)
    assert snapshot(env.data_dir) == before
