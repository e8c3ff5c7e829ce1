"""Hostile requests: garbage bytes, oversized and mistyped messages, absurd counts, truncated,
idle, slow and shredded upload streams, unicode and control characters in every string field,
path-like IDs, and a property-based fuzz of every handler. Each is answered with a clear status,
the server keeps serving, and the store is unchanged (refusals the audit log records by design
excepted)."""

from __future__ import annotations

import hashlib
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Identities
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.encodings import encodings_file, planted_pairs
from support.request_strategies import NASTY_TEXT, Call, Target, calls
from support.server_process import signed_agreement
from support.server_state import assert_unchanged
from support.waiting import wait_until

from blindlink._generated import linkage_pb2 as pb
from blindlink._generated import linkage_pb2_grpc as pb_grpc
from blindlink.audit.checkpoint import CHECKPOINT_NAME
from blindlink.client.linkage_client import ClientTls, LinkageClient
from blindlink.encoding.schema import LinkageSchema
from blindlink.security.pki import certificate_fingerprint, issue_client_certificate
from blindlink.security.tls import channel_credentials
from blindlink.server.admission import MIB, CallLimits
from blindlink.server.app import RunningServer, ServerTls, start_server
from blindlink.server.interceptors import StreamLimits
from blindlink.server.status import RETRY_METADATA_KEY
from blindlink.store.directory import STAGED_DIR

IDLE_S, MAX_S, FIRST_MESSAGE_S = 1.0, 3.0, 1.5
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
    CODE.ABORTED,  # a second stream of an upload that is streaming now
}
METHOD_KINDS = {
    "CreateProject": "unary_unary",
    "Upload": "stream_unary",
    "WatchRun": "unary_stream",
    "ApproveRun": "unary_unary",
    "GetRelease": "unary_unary",
    "GetStatus": "unary_unary",
    "GetUploadOffset": "unary_unary",
    "UpdateCustodian": "stream_unary",
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
        streams=StreamLimits(IDLE_S, MAX_S, first_message_timeout=FIRST_MESSAGE_S),
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
    audit checkpoint, which names the newest audit entries, and the interrupted uploads kept for
    their party to continue)."""
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
        if p.is_file()
        and not p.name.startswith("blindlink.db")
        and p.name != CHECKPOINT_NAME
        and p.parent.name != STAGED_DIR
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
    assert_unchanged(before, snapshot(env.data_dir))
    # At most one interrupted upload per party is kept, whatever the calls.
    kept = [p.name.rsplit(".", 1)[0] for p in (env.data_dir / STAGED_DIR).iterdir()]
    assert len(kept) == len(set(kept)), kept
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


def _silent(release: threading.Event) -> Iterator[bytes]:
    """A request stream that sends nothing until released."""
    release.wait(60)
    yield from ()


@pytest.mark.parametrize("method", ["GetStatus", "WatchRun"])
def test_a_call_whose_request_never_comes_is_aborted(env: Env, method: str) -> None:
    """gRPC itself would wait for a unary request on a call thread for as long as the client
    likes; the first message must come within first_message_timeout."""
    call = env.channels["requester"].stream_stream(SERVICE + method)
    release = threading.Event()
    started = time.monotonic()
    try:
        error = refused(env, lambda: list(call(_silent(release))))
    finally:
        release.set()
    assert error.code() == CODE.DEADLINE_EXCEEDED
    assert "first_message_timeout" in error.details()
    assert FIRST_MESSAGE_S <= time.monotonic() - started < FIRST_MESSAGE_S + 2


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
    assert_unchanged(before, snapshot(env.data_dir))


# --- Availability: stalled, slow and crowding calls -------------------------------------------

STALLED = 64
FIRST_S = 5.0  # the crowded server's first-message and idle timeouts
HEALTH = "/grpc.health.v1.Health/"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


@dataclass
class Crowd:
    """A server with default call limits, a project whose run waits for the custodian, and
    channels for the parties, an outsider no agreement names and ten more certificates."""

    server: RunningServer
    target: Target
    certificates: dict[str, ClientTls]
    channels: dict[str, grpc.Channel]

    def stub(self, name: str = "requester") -> pb_grpc.LinkageStub:
        return pb_grpc.LinkageStub(self.channels[name])

    def header(self) -> pb.UploadHeader:
        return pb.UploadHeader(
            project_id=self.target.project_id,
            count=100_000,
            bit_length=1024,
            schema_sha256=self.target.schema_sha256,
            content_sha256=bytes(32),
        )


@pytest.fixture(scope="module")
def crowd_server(
    tmp_path_factory: pytest.TempPathFactory, identities: Identities, schema: LinkageSchema
) -> Iterator[Crowd]:
    work = tmp_path_factory.mktemp("crowd")
    pki = identities.pki
    server = start_server(
        work / "data",
        "127.0.0.1:0",
        ServerTls(pki.server_cert, pki.server_key, pki.ca_cert),
        streams=StreamLimits(FIRST_S, 60.0, first_message_timeout=FIRST_S),
    )
    address = f"127.0.0.1:{server.port}"
    with LinkageClient(address, "requester", identities.tls("requester")) as requester:
        project = requester.create_project(signed_agreement(identities, schema, "crowd"))
        rows, _, _ = planted_pairs(10, 0, seed=3)
        run_id = requester.upload(
            project.project_id, encodings_file(work / "r.bin", rows, schema.sha256)
        ).run_id
    certificates = {role: identities.tls(role) for role in ("requester", "custodian")}
    certificates["outsider"] = identities.outsider
    for i in range(10):
        cert, key = issue_client_certificate(pki.ca_cert, pki.ca_key, f"extra{i}", work / f"x{i}")
        certificates[f"extra{i}"] = ClientTls(pki.ca_cert, cert, key)
    channels = {
        name: grpc.secure_channel(address, channel_credentials(tls.ca, tls.cert, tls.key))
        for name, tls in certificates.items()
    }
    target = Target(project.project_id, run_id, schema.sha256)
    yield Crowd(server, target, certificates, channels)
    for channel in channels.values():
        channel.close()
    server.stop(grace=1)


@pytest.fixture
def crowd(crowd_server: Crowd) -> Iterator[Crowd]:
    """The crowded server, with no call of an earlier test still admitted."""
    yield crowd_server
    admission = crowd_server.server.admission
    assert admission is not None
    assert wait_until(lambda: admission.open_calls() == 0, every=0.05)


def _trickle(first: pb.UploadRequest, release: threading.Event) -> Iterator[pb.UploadRequest]:
    """A header, then a byte every 0.2 s: slow, not stalled."""
    yield first
    while not release.wait(0.2):
        yield pb.UploadRequest(encodings=b"x")


def _open_call(crowd: Crowd, kind: str, channel: grpc.Channel, release: threading.Event) -> Any:
    """A call of this kind that stalls or crawls: its future, or its response iterator (which
    is never read)."""
    stub = pb_grpc.LinkageStub(channel)
    if kind == "uploads that send nothing":
        return stub.Upload.future(_silent(release))
    if kind == "uploads that trickle":
        return stub.Upload.future(_trickle(pb.UploadRequest(header=crowd.header()), release))
    if kind == "run watches never read":
        target = crowd.target
        return stub.WatchRun(pb.WatchRunRequest(project_id=target.project_id, run_id=target.run_id))
    if kind == "health watches never read":
        return health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    if kind == "reflection streams that send nothing":
        return channel.stream_stream(REFLECTION)(_silent(release))
    if kind == "unary calls whose request never comes":
        return channel.stream_unary(SERVICE + "GetStatus").future(_silent(release))
    assert kind == "health checks whose request never comes"
    return channel.stream_unary(HEALTH + "Check").future(_silent(release))


def _open_calls(crowd: Crowd, kind: str, names: list[str], release: threading.Event) -> list[Any]:
    """`STALLED` calls of a kind, spread over the certificates `names`."""
    opened = [
        _open_call(crowd, kind, crowd.channels[names[i % len(names)]], release)
        for i in range(STALLED)
    ]
    time.sleep(1.0)  # let the server take them all in
    return opened


def _answered_promptly(crowd: Crowd) -> None:
    """A health check (from a certificate no agreement names) and a party's status call are
    answered well, within a few seconds (on a quiet machine in milliseconds; the deadline only
    tells an answer from a stall, on a loaded 2-core machine shared with the flood's own 32
    threads)."""
    started = time.monotonic()
    health = health_pb2_grpc.HealthStub(crowd.channels["extra9"]).Check(
        health_pb2.HealthCheckRequest(service="blindlink.v1.Linkage"), timeout=3.0
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    status = crowd.stub("requester").GetStatus(
        pb.GetStatusRequest(project_id=crowd.target.project_id), timeout=3.0
    )
    assert status.runs[0].run_id == crowd.target.run_id
    assert time.monotonic() - started < 6.0


# Only parties may watch a run or keep an upload going past its header; anyone may try the
# rest. The requester's status call and extra9's health check must be answered.
PARTIES = ["requester", "custodian"]
OTHERS = ["outsider"] + [f"extra{i}" for i in range(9)]
CROWDS = {
    "uploads that send nothing": PARTIES + OTHERS,
    "uploads that trickle": PARTIES,
    "run watches never read": PARTIES,
    "health watches never read": OTHERS,
    "reflection streams that send nothing": PARTIES + OTHERS,
    "unary calls whose request never comes": ["custodian", *OTHERS],
    "health checks whose request never comes": PARTIES + OTHERS,
}


@pytest.mark.parametrize("kind", CROWDS)
def test_health_and_short_calls_are_answered_while_64_calls_stall(crowd: Crowd, kind: str) -> None:
    """64 calls that stall or crawl, from up to 12 certificates: each certificate gets its
    share, the rest are refused at once as busy, and the threads left answer health checks
    and a party's status call within a second (when a share is full of calls that sent
    nothing, one of them gives its place up)."""
    release = threading.Event()
    opened = _open_calls(crowd, kind, CROWDS[kind], release)
    try:
        _answered_promptly(crowd)
        refused_now = [call for call in opened if call.done()]
        assert len(refused_now) >= STALLED // 2
        assert all(call.code() in CLEAR for call in refused_now)
        assert any(call.code() == CODE.RESOURCE_EXHAUSTED for call in refused_now)
    finally:
        release.set()
        for call in opened:
            call.cancel()
    _answered_promptly(crowd)


def test_health_and_short_calls_are_answered_during_a_flood_of_unary_calls(crowd: Crowd) -> None:
    """32 threads on 4 certificates call as fast as they can: each certificate keeps at most
    its share busy, and health checks and a party's status call are still answered."""
    stop = threading.Event()
    outcomes: list[grpc.StatusCode] = []

    def flood(stub: pb_grpc.LinkageStub) -> None:
        request = pb.GetStatusRequest(project_id=crowd.target.project_id)
        while not stop.is_set():
            try:
                stub.GetStatus(request, timeout=5)
            except grpc.RpcError as exc:
                outcomes.append(exc.code())

    names = ["outsider", "extra0", "extra1", "extra2"]
    threads = [threading.Thread(target=flood, args=(crowd.stub(names[i % 4]),)) for i in range(32)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        for _ in range(5):
            _answered_promptly(crowd)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert set(outcomes) <= {CODE.PERMISSION_DENIED, CODE.RESOURCE_EXHAUSTED}
    assert CODE.RESOURCE_EXHAUSTED in outcomes


def test_a_certificate_beyond_its_share_is_refused_and_told_to_retry(
    crowd: Crowd, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused at once, told to retry, and named in the server's log by its fingerprint (a
    certificate no other test has had refused, as the log takes 10 refusals a minute each)."""
    release = threading.Event()
    extra9 = crowd.stub("extra9")
    mine = [extra9.Upload.future(_silent(release)) for _ in range(4)]
    try:
        time.sleep(0.5)
        assert not any(call.done() for call in mine)
        with (
            caplog.at_level(logging.WARNING, logger="blindlink.server"),
            pytest.raises(grpc.RpcError) as err,
        ):
            extra9.Upload(_silent(release), timeout=5)
        assert err.value.code() == CODE.RESOURCE_EXHAUSTED
        assert "max_calls_per_certificate" in err.value.details()
        assert (RETRY_METADATA_KEY, "1") in err.value.trailing_metadata()
        fingerprint = certificate_fingerprint(crowd.certificates["extra9"].cert.read_bytes())
        warnings = [r for r in caplog.records if r.getMessage() == "call refused: busy"]
        assert any(r.fields["caller"] == fingerprint for r in warnings)
        # Another certificate still gets its own share.
        theirs = crowd.stub("custodian").Upload.future(_silent(release))
        time.sleep(0.5)
        assert not theirs.done()
        theirs.cancel()
    finally:
        release.set()
        for call in mine:
            call.cancel()


def test_a_full_share_of_calls_that_sent_something_refuses_newcomers(crowd: Crowd) -> None:
    """4 health watches, which have sent their request, fill their share: a fifth is refused
    at once, naming the share."""
    names = ["outsider", "extra0", "extra1", "extra2"]
    watches = [
        health_pb2_grpc.HealthStub(crowd.channels[name]).Watch(health_pb2.HealthCheckRequest())
        for name in names
    ]
    try:
        for watch in watches:
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        late = health_pb2_grpc.HealthStub(crowd.channels["extra3"]).Watch(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        with pytest.raises(grpc.RpcError) as err:
            next(late)
        assert err.value.code() == CODE.RESOURCE_EXHAUSTED
        assert "health watches and reflection" in err.value.details()
    finally:
        for watch in watches:
            watch.cancel()


def test_health_watches_and_reflection_cannot_keep_uploads_out(crowd: Crowd) -> None:
    release = threading.Event()
    watches = _open_calls(crowd, "health watches never read", OTHERS, release)
    reflections = _open_calls(crowd, "reflection streams that send nothing", OTHERS, release)
    try:
        header = crowd.header()
        header.count = 10
        upload = crowd.stub("custodian").Upload.future(
            _stalled([pb.UploadRequest(header=header)], release)
        )
        time.sleep(0.5)
        assert not upload.done()  # admitted, waiting for its data
        upload.cancel()
    finally:
        release.set()
        for call in watches + reflections:
            call.cancel()


def test_a_stream_that_sent_nothing_gives_its_place_to_another_caller(crowd: Crowd) -> None:
    """16 silent uploads from certificates no agreement names: they hold at most half the
    streaming share, each one beyond it taking the place of an older silent one, and the
    custodian's upload, which sends its header, is admitted."""
    release = threading.Event()
    names = ["outsider", "extra0", "extra1", "extra2"]
    silent = [crowd.stub(n).Upload.future(_silent(release)) for n in names for _ in range(4)]
    try:
        time.sleep(0.5)
        evicted = [call for call in silent if call.done()]
        assert 0 < len(evicted) < len(silent)
        for call in evicted:
            assert call.code() == CODE.RESOURCE_EXHAUSTED
            assert "needed its place for another caller" in call.details()
        header = crowd.header()
        header.count = 10
        upload = crowd.stub("custodian").Upload.future(
            _stalled([pb.UploadRequest(header=header)], release)
        )
        time.sleep(0.5)
        assert not upload.done()  # admitted, waiting for its data
        upload.cancel()
    finally:
        release.set()
        for call in silent:
            call.cancel()


def test_request_bytes_held_across_calls_are_bounded(
    tmp_path: Path, identities: Identities, schema: LinkageSchema
) -> None:
    """A watch whose request carries 1 MiB of padding (an unknown field) holds that MiB while
    it lasts: with 1.5 MiB allowed, an upload's 1 MiB chunk is refused as busy until the watch
    ends, then let through (and judged on its content)."""
    pki = identities.pki
    server = start_server(
        tmp_path / "data",
        "127.0.0.1:0",
        ServerTls(pki.server_cert, pki.server_key, pki.ca_cert),
        calls=CallLimits(max_buffered_bytes=3 * MIB // 2),
    )
    address = f"127.0.0.1:{server.port}"
    tls = identities.tls("requester")
    try:
        with LinkageClient(address, "requester", tls) as requester:
            project = requester.create_project(signed_agreement(identities, schema, "bytes"))
            rows, _, _ = planted_pairs(10, 0, seed=3)
            path = encodings_file(tmp_path / "r.bin", rows, schema.sha256)
            run_id = requester.upload(project.project_id, path).run_id
        channel = grpc.secure_channel(address, channel_credentials(tls.ca, tls.cert, tls.key))
        watch_request = pb.WatchRunRequest(project_id=project.project_id, run_id=run_id)
        padded = watch_request.SerializeToString() + delimited(15, bytes(MIB))
        watch = channel.unary_stream(SERVICE + "WatchRun")(padded)
        assert next(watch)  # the watch is open, its request held
        header = pb.UploadHeader(
            project_id=project.project_id,
            count=10,
            bit_length=1024,
            schema_sha256=schema.sha256,
            content_sha256=bytes(32),
        )
        upload = [pb.UploadRequest(header=header), pb.UploadRequest(encodings=bytes(MIB))]
        stub = pb_grpc.LinkageStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Upload(iter(upload), timeout=5)
        assert err.value.code() == CODE.RESOURCE_EXHAUSTED
        assert "max_buffered_mib" in err.value.details()
        assert (RETRY_METADATA_KEY, "1") in err.value.trailing_metadata()
        watch.cancel()
        for _ in range(20):
            with pytest.raises(grpc.RpcError) as err:
                stub.Upload(iter(upload), timeout=5)
            if err.value.code() != CODE.RESOURCE_EXHAUSTED:
                break
            time.sleep(0.1)
        assert err.value.code() == CODE.INVALID_ARGUMENT
        assert "more than the 10 encodings" in err.value.details()
        channel.close()
    finally:
        server.stop(grace=1)
