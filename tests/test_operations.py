"""Operating the server: settings from a config file, the environment and flags; health
checking while starting and draining; graceful shutdown; Prometheus metrics; JSON logs that
hold no identity data, secret or encoding; and the `blindlink admin` commands."""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import Identities
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from support.encodings import encodings_file, planted_pairs
from support.leaks import found_in, identity_values
from support.server_process import ServerProcess, server_launcher, signed_agreement

from blindlink._generated import linkage_pb2 as pb
from blindlink._generated import linkage_pb2_grpc as pb_grpc
from blindlink.cli.main import build_parser, main
from blindlink.client.linkage_client import LinkageClient, ServerError
from blindlink.encoding.encoder import encode_csv
from blindlink.encoding.encodings_file import HEADER_SIZE, read_payload, write_encodings
from blindlink.encoding.schema import LinkageSchema
from blindlink.errors import BlindlinkError
from blindlink.security.keys import generate_signing_key
from blindlink.security.tls import channel_credentials
from blindlink.server import app
from blindlink.server.app import RunningServer, ServerTls, start_server
from blindlink.server.config import ConfigError, ServerConfig, load_config
from blindlink.server.interceptors import REQUEST_ID_METADATA_KEY, StreamLimits
from blindlink.server.logs import CallContextFilter, JsonFormatter
from blindlink.synthetic import generate_datasets

HEALTH_SERVICE = "blindlink.v1.Linkage"

launch_fixture = pytest.fixture(name="launch")(server_launcher)

# --- Settings -------------------------------------------------------------------------------


def test_settings_come_from_flags_then_environment_then_file_then_defaults(
    tmp_path: Path,
) -> None:
    config_file = tmp_path / "server.toml"
    config_file.write_text(
        'data_dir = "state"\nlisten = "127.0.0.1:7000"\nrpc_workers = 4\n'
        'insecure = true\nstream_idle_timeout = 5\nlog_format = "text"\n'
    )
    environ = {"BLINDLINK_RPC_WORKERS": "8", "BLINDLINK_LISTEN": "127.0.0.1:7001"}
    args = build_parser().parse_args(["serve", "--config", str(config_file), "--rpc-workers", "9"])
    config = load_config(vars(args), environ, args.config)
    assert config.rpc_workers == 9  # flag
    assert config.listen == "127.0.0.1:7001"  # environment
    assert config.data_dir == tmp_path / "state"  # file, relative to the file
    assert config.stream_idle_timeout == 5.0 and config.log_format == "text"  # file
    assert config.purge_interval == ServerConfig().purge_interval  # default
    assert config.server_tls() is None
    # BLINDLINK_CONFIG names the file when --config does not.
    from_env = load_config({}, {"BLINDLINK_CONFIG": str(config_file)}, None)
    assert from_env.rpc_workers == 4


def test_legacy_flags_name_the_tls_files(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["serve", "--data-dir", "d", "--cert", "c.pem", "--key", "k.pem", "--client-ca", "ca.pem"]
    )
    tls = load_config(vars(args), {}, None).server_tls()
    assert tls == ServerTls(Path("c.pem"), Path("k.pem"), Path("ca.pem"))


@pytest.mark.parametrize(
    ("file", "environ", "words"),
    [
        ("data_dir = 'd'\ninsecure = true\nlisten_port = 1\n", {}, "unknown setting 'listen_port'"),
        ("data_dir = 'd'\ninsecure = true\nrpc_workers = '8'\n", {}, "must be an integer"),
        ("data_dir = 'd'\ninsecure = true\nrpc_workers = true\n", {}, "must be an integer"),
        ("data_dir = 'd'\ninsecure = 'yes'\n", {}, "must be true or false"),
        ("data_dir = [\n", {}, "not valid TOML"),
        ("insecure = true\n", {}, "data_dir is not set"),
        ("data_dir = 'd'\n", {}, "no TLS material"),
        ("data_dir = 'd'\ninsecure = true\ntls_dir = 'pki'\n", {}, "insecure contradicts"),
        ("data_dir = 'd'\ntls_cert = 'c'\n", {}, "tls_cert given without tls_client_ca, tls_key"),
        ("data_dir = 'd'\ninsecure = true\nlog_format = 'xml'\n", {}, "log_format must be one of"),
        ("data_dir = 'd'\ninsecure = true\nstream_idle_timeout = 0\n", {}, "stream_idle_timeout"),
        ("data_dir = 'd'\ninsecure = true\nfirst_message_timeout = 0\n", {}, "first_message"),
        ("data_dir = 'd'\ninsecure = true\nrpc_workers = 1\n", {}, "rpc_workers must be"),
        ("data_dir = 'd'\ninsecure = true\nmax_streams = 32\n", {}, "max_streams must be less"),
        ("data_dir = 'd'\ninsecure = true\nmax_calls_per_certificate = 0\n", {}, "at least 1"),
        ("data_dir = 'd'\ninsecure = true\nmax_buffered_mib = 1\n", {}, "at least 4, the largest"),
        ("data_dir = 'd'\ninsecure = true\nlisten = 'nowhere'\n", {}, "listen must be HOST:PORT"),
        ("data_dir = 'd'\ninsecure = true\n", {"BLINDLINK_RPC_WORKERS": "many"}, "'many' is not"),
        ("data_dir = 'd'\ninsecure = true\n", {"BLINDLINK_INSECURE": "maybe"}, "not a boolean"),
    ],
)
def test_bad_settings_are_refused_with_the_setting_named(
    tmp_path: Path, file: str, environ: dict[str, str], words: str
) -> None:
    config_file = tmp_path / "server.toml"
    config_file.write_text(file)
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_config({}, environ, config_file)


# --- Health while starting ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_health_reports_not_serving_while_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = threading.Event()
    proceed = threading.Event()
    purge_once = app.purge_once

    def slow_purge(store: object) -> None:  # the store is open; runs are not resumed yet
        opened.set()
        proceed.wait(10)
        purge_once(store)  # type: ignore[arg-type]

    monkeypatch.setattr(app, "purge_once", slow_purge)
    address = f"127.0.0.1:{free_port()}"
    started: list[RunningServer] = []
    starter = threading.Thread(
        target=lambda: started.append(start_server(tmp_path / "data", address, None))
    )
    starter.start()
    try:
        assert opened.wait(10)
        with grpc.insecure_channel(address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            request = health_pb2.HealthCheckRequest(service=HEALTH_SERVICE)
            assert check(request).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.LinkageStub(channel).GetStatus(pb.GetStatusRequest(project_id="0" * 64))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "starting" in err.value.details()
            proceed.set()
            starter.join(10)
            assert check(request).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        proceed.set()
        starter.join(10)
        for server in started:
            server.stop(grace=1)


# --- A server process: JSON logs, metrics endpoint, graceful shutdown -------------------------


def test_sigterm_lets_an_upload_in_flight_finish_and_exits_zero(
    tmp_path: Path,
    launch: Callable[..., ServerProcess],
    identities: Identities,
    schema: LinkageSchema,
) -> None:
    server = launch(metrics_listen="127.0.0.1:0", shutdown_grace=10.0).start()
    requester_rows, custodian_rows, pairs = planted_pairs(400, 40, seed=5)
    with server.client("requester") as requester, server.client("custodian") as custodian:
        project = requester.create_project(signed_agreement(identities, schema, "sigterm"))
        project_id = project.project_id
        custodian.upload(
            project_id, encodings_file(tmp_path / "c.bin", custodian_rows, schema.sha256)
        )
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port(server)}/metrics").read()
    assert b'blindlink_requests_total{code="OK",method="Upload"' in scraped

    batch = encodings_file(tmp_path / "r.bin", requester_rows, schema.sha256)
    header, payload = read_payload(batch)
    halfway = threading.Event()

    def slow_upload() -> Iterator[pb.UploadRequest]:
        yield pb.UploadRequest(
            header=pb.UploadHeader(
                project_id=project_id,
                count=header.count,
                bit_length=header.bit_length,
                schema_sha256=header.schema_sha256,
                content_sha256=header.content_sha256,
            )
        )
        for number, chunk in enumerate(np.array_split(np.frombuffer(payload, np.uint8), 8)):
            if number == 3:
                halfway.set()
            time.sleep(0.15)
            yield pb.UploadRequest(encodings=chunk.tobytes())

    receipts: list[pb.UploadReceipt] = []
    with server.channel() as channel:
        statuses = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=HEALTH_SERVICE)
        )
        assert next(statuses).status == health_pb2.HealthCheckResponse.SERVING
        uploader = threading.Thread(
            target=lambda: receipts.append(pb_grpc.LinkageStub(channel).Upload(slow_upload()))
        )
        uploader.start()
        assert halfway.wait(10)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        assert next(statuses).status == health_pb2.HealthCheckResponse.NOT_SERVING
        statuses.cancel()
        uploader.join(10)
    assert server.process.wait(15) == 0
    assert receipts and receipts[0].run_id  # the upload finished during the drain
    records = server.log_records()
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    uploads = [
        r for r in records if r.get("method") == "Upload" and r["message"] == "call finished"
    ]
    assert [r["code"] for r in uploads] == ["OK", "OK"]
    assert all(re.fullmatch(r"[0-9a-f]{16}", r["request_id"]) for r in uploads)
    assert any(r["message"].startswith("shutting down") for r in records)

    # The batch committed during the drain was left queued; it runs after the restart.
    server.start()
    with server.client("requester") as requester:
        run_id = receipts[0].run_id
        assert requester.wait(project_id, run_id).state == pb.RUN_STATE_DONE
        assert list(requester.release(project_id, run_id).own_rows) == [r for r, _ in pairs]
    assert server.terminate() == 0


def test_sigterm_during_matching_exits_promptly_and_the_run_resumes(
    tmp_path: Path,
    launch: Callable[..., ServerProcess],
    identities: Identities,
    schema: LinkageSchema,
) -> None:
    server = launch(shutdown_grace=0.2, metrics_listen="127.0.0.1:0").start()
    # Large enough that matching is still running when the metrics are read, with the native
    # kernel on both cores (about a second).
    requester_rows, custodian_rows, pairs = planted_pairs(30_000, 300, seed=9)
    with server.client("requester") as requester, server.client("custodian") as custodian:
        project = requester.create_project(signed_agreement(identities, schema, "drain")).project_id
        custodian.upload(project, encodings_file(tmp_path / "c.bin", custodian_rows, schema.sha256))
        run_id = requester.upload(
            project, encodings_file(tmp_path / "r.bin", requester_rows, schema.sha256)
        ).run_id
        for progress in requester.watch(project, run_id):
            if progress.stage == "comparing":
                break
        # What a party sees of the run's progress reveals neither party's record count: the
        # work is in thousandths, and no count of comparisons is quoted.
        assert progress.total == 1000 and progress.done <= 1000
        assert "comparisons" not in progress.message and "/s" not in progress.message
        assert str(30_000 * 30_000) not in progress.message.replace(",", "")
    samples = scrape(metrics_port(server))
    assert samples[("blindlink_runs", (("state", "running"),))] == 1
    assert samples[("blindlink_run_comparisons_per_second", ())] > 0
    asked = time.monotonic()
    assert server.terminate() == 0
    assert time.monotonic() - asked < 5
    # Interrupted, normally; had it finished within the grace period, it would be done.
    assert server.rows("SELECT state FROM runs") in ([("running",)], [("done",)])
    server.start()
    with server.client("requester") as requester:
        assert requester.wait(project, run_id).state == pb.RUN_STATE_DONE
        assert list(requester.release(project, run_id).own_rows) == [r for r, _ in pairs]
    assert server.terminate() == 0


def metrics_port(server: ServerProcess) -> int:
    """The metrics port the server last logged (it was asked for any free port)."""
    return [
        int(m.group(1))
        for r in server.log_records()
        if (m := re.fullmatch(r"metrics on port (\d+)", r["message"]))
    ][-1]


# --- Metrics --------------------------------------------------------------------------------


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_calls_by_method_and_code_upload_bytes_and_runs(
    tmp_path: Path, identities: Identities, schema: LinkageSchema
) -> None:
    pki = identities.pki
    server = start_server(
        tmp_path / "data",
        "127.0.0.1:0",
        ServerTls(pki.server_cert, pki.server_key, pki.ca_cert),
        metrics_listen="127.0.0.1:0",
    )
    try:
        address = f"127.0.0.1:{server.port}"
        requester_rows, custodian_rows, _ = planted_pairs(300, 30, seed=6)
        with (
            LinkageClient(address, "requester", identities.tls("requester")) as requester,
            LinkageClient(address, "custodian", identities.tls("custodian")) as custodian,
        ):
            project = requester.create_project(signed_agreement(identities, schema, "metrics"))
            project_id = project.project_id
            custodian.upload(
                project_id, encodings_file(tmp_path / "c.bin", custodian_rows, schema.sha256)
            )
            run_id = requester.upload(
                project_id, encodings_file(tmp_path / "r.bin", requester_rows, schema.sha256)
            ).run_id
            requester.wait(project_id, run_id)
            for _ in range(3):
                with pytest.raises(ServerError):
                    requester.status("f" * 64)
        assert server.metrics_port is not None
        samples = scrape(server.metrics_port)
    finally:
        server.stop(grace=1)

    def sample(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    linkage = {"service": "blindlink.v1.Linkage"}
    assert sample("blindlink_requests_total", method="Upload", code="OK", **linkage) == 2
    assert sample("blindlink_requests_total", method="GetStatus", code="NOT_FOUND", **linkage) == 3
    assert sample("blindlink_request_duration_seconds_count", method="Upload", **linkage) == 2
    assert sample("blindlink_request_bytes_total", method="Upload", **linkage) > 600 * 128
    assert sample("blindlink_requests_in_flight", method="Upload", **linkage) == 0
    assert sample("blindlink_runs", state="done") == 1
    assert sample("blindlink_runs", state="queued") == 0
    assert sample("blindlink_runs_queued") == 0
    assert sample("blindlink_run_comparisons_per_second") == 0  # no run in progress


# --- Logs and error messages hold no identity value, secret or encoding ----------------------

SECRET = b"operations test secret, known to the parties only"


def encoding_needles(*paths: Path) -> set[bytes]:
    """Pieces of every encoding as they would appear if logged: raw, hex, base64, repr."""
    needles = set()
    for path in paths:
        header, payload = read_payload(path)
        rows = np.frombuffer(payload, np.uint8).reshape(header.count, -1)
        for row in rows:
            for start in range(0, len(row) - 12, 36):
                piece = row[start : start + 12].tobytes()
                needles |= {
                    piece,
                    piece.hex().encode(),
                    base64.b64encode(piece),
                    repr(piece)[2:-1].encode(),
                }
    return needles


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Everything logged, as the server writes it with --log-format json."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(CallContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


def test_logs_and_errors_of_a_full_run_hold_no_identity_secret_or_encoding(
    tmp_path: Path,
    identities: Identities,
    schema: LinkageSchema,
    json_log: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = generate_datasets(tmp_path / "people", 300, 0.5, seed=21)
    encoded = {}
    for role, csv_path in (("requester", files.requester), ("custodian", files.custodian)):
        encoded[role] = tmp_path / f"{role}.bin"
        encode_csv(csv_path, schema, SECRET, encoded[role], tmp_path / f"{role}-ids.json")
    pki = identities.pki
    server = start_server(
        tmp_path / "data",
        "127.0.0.1:0",
        ServerTls(pki.server_cert, pki.server_key, pki.ca_cert),
        streams=StreamLimits(idle_timeout=0.5, max_duration=10),
    )
    address = f"127.0.0.1:{server.port}"
    errors: list[str] = []

    def failing(call: Callable[[], object]) -> None:
        try:
            call()
        except ServerError as exc:
            errors.append(str(exc))
        except grpc.RpcError as exc:
            errors.append(f"{exc.code().name}: {exc.details()} {exc.trailing_metadata()}")
        else:
            raise AssertionError("the call should have failed")

    try:
        with (
            LinkageClient(address, "requester", identities.tls("requester")) as requester,
            LinkageClient(address, "custodian", identities.tls("custodian")) as custodian,
            LinkageClient(address, "requester", identities.outsider) as outsider,
        ):
            project = requester.create_project(
                signed_agreement(identities, schema, "privacy", custodian_release="pairs")
            ).project_id
            custodian.upload(project, encoded["custodian"])
            run_id = requester.upload(project, encoded["requester"]).run_id
            assert requester.wait(project, run_id).state == pb.RUN_STATE_DONE
            assert requester.release(project, run_id).match_count > 100
            custodian.release(project, run_id)
            # Errors of every kind, several carrying real encodings.
            failing(lambda: requester.upload("e" * 64, encoded["requester"]))
            failing(lambda: custodian.upload(project, encoded["custodian"]))
            failing(lambda: outsider.status(project))
            failing(lambda: requester.release(project, "0" * 32))
            failing(lambda: _altered_upload(address, identities, project, encoded["requester"]))
            failing(lambda: _stalled_upload(address, identities, project, encoded["requester"]))
            failing(lambda: _garbage(address, identities, encoded["requester"]))
            _, payload = read_payload(encoded["custodian"])
            secret_message = f"row {payload[:48].hex()} and {SECRET.decode()}"

            def broken_matches(run: str, status: object = None) -> object:
                raise ValueError(secret_message)

            monkeypatch.setattr(server.store, "matches", broken_matches)
            failing(lambda: custodian.release(project, run_id))
    finally:
        server.stop(grace=1)
    assert any("INTERNAL" in e and "request" in e for e in errors)
    assert len(errors) == 8

    log = json_log.getvalue()
    records = [json.loads(line) for line in log.splitlines()]
    calls = [r for r in records if r["message"] == "call finished"]
    assert {r["method"] for r in calls} >= {"CreateProject", "Upload", "GetRelease", "GetStatus"}
    assert all(r["request_id"] for r in calls)
    assert any(r.get("error") == "ValueError" for r in records)  # the type, not its message
    haystack = (log + "\n".join(errors)).encode()
    plaintext = identity_values(files.requester, files.custodian)
    secrets = {SECRET, SECRET.hex().encode(), base64.b64encode(SECRET)}
    encodings = encoding_needles(encoded["requester"], encoded["custodian"])
    assert len(plaintext) > 1000 and len(encodings) > 4000
    assert found_in(haystack, plaintext) == set()
    assert found_in(haystack, secrets) == set()
    assert found_in(haystack, encodings) == set()


def _stub(address: str, identities: Identities, role: str = "requester") -> grpc.Channel:
    tls = identities.tls(role)
    return grpc.secure_channel(address, channel_credentials(tls.ca, tls.cert, tls.key))


def _upload_messages(project: str, path: Path, payload: bytes) -> list[pb.UploadRequest]:
    header, _ = read_payload(path)
    return [
        pb.UploadRequest(
            header=pb.UploadHeader(
                project_id=project,
                count=header.count,
                bit_length=header.bit_length,
                schema_sha256=header.schema_sha256,
                content_sha256=header.content_sha256,
            )
        ),
        pb.UploadRequest(encodings=payload),
    ]


def _altered_upload(address: str, identities: Identities, project: str, path: Path) -> None:
    _, payload = read_payload(path)
    altered = bytes([payload[0] ^ 1]) + payload[1:]
    with _stub(address, identities) as channel:
        pb_grpc.LinkageStub(channel).Upload(iter(_upload_messages(project, path, altered)))


def _stalled_upload(address: str, identities: Identities, project: str, path: Path) -> None:
    _, payload = read_payload(path)
    messages = _upload_messages(project, path, payload[: len(payload) // 2])
    release = threading.Event()

    def stalled() -> Iterator[pb.UploadRequest]:
        yield from messages
        release.wait(10)

    try:
        with _stub(address, identities) as channel:
            pb_grpc.LinkageStub(channel).Upload(stalled())
    finally:
        release.set()


def _garbage(address: str, identities: Identities, path: Path) -> None:
    with _stub(address, identities) as channel:
        channel.unary_unary("/blindlink.v1.Linkage/GetStatus")(path.read_bytes()[HEADER_SIZE:])


def test_request_id_is_returned_in_trailing_metadata(
    address: str, identities: Identities, json_log: io.StringIO
) -> None:
    with _stub(address, identities) as channel, pytest.raises(grpc.RpcError) as err:
        pb_grpc.LinkageStub(channel).GetStatus(pb.GetStatusRequest(project_id="../../etc/passwd"))
    request_id = dict(err.value.trailing_metadata())[REQUEST_ID_METADATA_KEY]
    logged = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert {
        "request_id": request_id,
        "method": "GetStatus",
        "code": "INVALID_ARGUMENT",
    }.items() <= next(r for r in logged if r.get("request_id") == request_id).items()


# --- blindlink admin ------------------------------------------------------------------------


@pytest.fixture
def linked_data_dir(
    tmp_path: Path, identities: Identities, schema: LinkageSchema
) -> tuple[Path, str, str, list[Path]]:
    """A stopped server's data dir after a run and both releases: (dir, project, run, files)."""
    requester_rows, custodian_rows, _ = planted_pairs(300, 30, seed=8)
    files = [
        encodings_file(tmp_path / "c.bin", custodian_rows, schema.sha256),
        encodings_file(tmp_path / "r.bin", requester_rows, schema.sha256),
    ]
    data_dir = tmp_path / "data"
    server = start_server(data_dir, "127.0.0.1:0", None)
    try:
        address = f"127.0.0.1:{server.port}"
        with (
            LinkageClient(address, "requester", None) as requester,
            LinkageClient(address, "custodian", None) as custodian,
        ):
            agreement = signed_agreement(
                identities, schema, "DSA-ops", delete_encodings_after_release=False
            )
            project = requester.create_project(agreement).project_id
            custodian.upload(project, files[0])
            run_id = requester.upload(project, files[1]).run_id
            requester.wait(project, run_id)
            requester.release(project, run_id)
            custodian.release(project, run_id)
    finally:
        server.stop(grace=1)
    return data_dir, project, run_id, files


def admin(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(["admin", *args])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_admin_projects_and_run_show_metadata_but_never_encodings(
    linked_data_dir: tuple[Path, str, str, list[Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir, project, run_id, files = linked_data_dir
    status, text = admin(capsys, "projects", "--data-dir", str(data_dir))
    assert status == 0
    assert project in text and "'DSA-ops'" in text and "1 done" in text
    assert "requester 1 (300 records)" in text and "custodian 1 (300 records)" in text
    status, lines = admin(capsys, "projects", "--data-dir", str(data_dir), "--json")
    (summary,) = [json.loads(line) for line in lines.splitlines()]
    assert summary["uploads"] == {"requester": 1, "custodian": 1}
    assert summary["runs"] == {"done": 1} and summary["stored_encodings"] == 2
    status, report = admin(capsys, "run", "--data-dir", str(data_dir), project, run_id)
    assert status == 0
    assert "state      done" in report and "30 released, 0 withheld" in report
    for kind in ("upload_committed", "run_started", "run_finished", "release_fetched"):
        assert kind in report
    status, missing = admin(capsys, "run", "--data-dir", str(data_dir), project, "0" * 32)
    assert status == 2 and "no run" in missing
    assert found_in((text + lines + report).encode(), encoding_needles(*files)) == set()


def test_admin_purge_applies_retention_and_needs_the_server_stopped(
    tmp_path: Path,
    identities: Identities,
    schema: LinkageSchema,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir, "127.0.0.1:0", None, purge_interval=3600)
    try:
        with LinkageClient(f"127.0.0.1:{server.port}", "custodian", None) as custodian:
            requester_rows, _, _ = planted_pairs(20, 0, seed=1)
            agreement = signed_agreement(identities, schema, "ttl", encodings_ttl_seconds=1)
            project = custodian.create_project(agreement).project_id
            custodian.upload(
                project, encodings_file(tmp_path / "c.bin", requester_rows, schema.sha256)
            )
        status, busy = admin(capsys, "purge", "--data-dir", str(data_dir))
        assert status == 2 and "in use by another process" in busy
    finally:
        server.stop(grace=1)
    time.sleep(1.1)
    status, text = admin(capsys, "purge", "--data-dir", str(data_dir))
    assert status == 0
    assert "deleted encodings of upload" in text and "retention.encodings_ttl_seconds" in text
    assert list((data_dir / "encodings").iterdir()) == []
    assert admin(capsys, "verify", "--data-dir", str(data_dir))[0] == 0


def _flip_payload_byte(d: Path) -> None:
    path = next((d / "encodings").iterdir())
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 5] ^= 1
    path.write_bytes(bytes(data))


def _sql(statement: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        db = sqlite3.connect(d / "blindlink.db")
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute(statement)
        db.commit()
        db.close()

    return damage


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "altered encodings": (_flip_payload_byte, "content hash does not match"),
    "truncated encodings": (
        lambda d: (p := next((d / "encodings").iterdir())).write_bytes(p.read_bytes()[:-128]),
        "truncated or padded",
    ),
    "missing encodings": (
        lambda d: next((d / "encodings").iterdir()).unlink(),
        "is missing",
    ),
    "orphan file": (
        lambda d: (d / "encodings" / f"{'a' * 32}.bin").write_bytes(b"x"),
        "(orphan)",
    ),
    "leftover upload": (
        lambda d: (d / "incoming" / "x.bin.partial").write_bytes(b"x"),
        "leftover of an interrupted upload",
    ),
    "dangling foreign key": (
        _sql(f"INSERT INTO matches VALUES ('{'b' * 32}', 1, 2, 0.9, 0, NULL)"),
        "matches row",
    ),
    "lost matches": (
        _sql("DELETE FROM matches WHERE rowid = (SELECT min(rowid) FROM matches)"),
        "records 30 released, 0 withheld and 0 possible matches, but holds 29, 0 and 0",
    ),
    "edited audit entry": (
        _sql("UPDATE audit_log SET details = '{\"count\":1}' WHERE seq = 2"),
        "audit log seq 2: entry_hash does not match",
    ),
    "removed audit entry": (
        _sql("DELETE FROM audit_log WHERE seq = 3"),
        "audit log seq 4:",
    ),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_admin_verify_finds_each_kind_of_damage(
    linked_data_dir: tuple[Path, str, str, list[Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    data_dir = linked_data_dir[0]
    status, text = admin(capsys, "verify", "--data-dir", str(data_dir))
    assert status == 0 and "data directory OK: 1 projects, 2 encodings files" in text
    damaged = tmp_path / "damaged"
    shutil.copytree(data_dir, damaged)
    harm, words = DAMAGE[damage]
    harm(damaged)
    status, text = admin(capsys, "verify", "--data-dir", str(damaged))
    assert status == 1
    assert words in text


def test_admin_verify_checks_the_audit_log_against_the_key_given(
    linked_data_dir: tuple[Path, str, str, list[Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, other_key = generate_signing_key(tmp_path / "other")
    data_dir = str(linked_data_dir[0])
    status, text = admin(capsys, "verify", "--data-dir", data_dir, "--server-key", str(other_key))
    assert status == 1 and "signature does not match" in text
    config = tmp_path / "server.toml"
    config.write_text(f"data_dir = {json.dumps(data_dir)}\n")
    assert admin(capsys, "verify", "--config", str(config))[0] == 0


def test_watchers_beyond_half_the_stream_threads_poll_instead(
    tmp_path: Path,
    identities: Identities,
    make_agreement: Callable[..., bytes],
    schema: LinkageSchema,
) -> None:
    """With 8 call threads, 4 serve streams and 2 runs may be watched at once; a third
    watcher is told to poll, `wait` does so by itself, and uploads still find a thread."""
    pki = identities.pki
    server = start_server(
        tmp_path / "data", "127.0.0.1:0", ServerTls(pki.server_cert, pki.server_key, pki.ca_cert), 8
    )
    address = f"127.0.0.1:{server.port}"
    try:
        with (
            LinkageClient(address, "requester", identities.tls("requester")) as requester,
            LinkageClient(address, "custodian", identities.tls("custodian")) as custodian,
        ):
            project = requester.create_project(make_agreement()).project_id
            rows = np.random.default_rng(3).integers(0, 256, (8, 128), dtype=np.uint8)
            write_encodings(tmp_path / "r.bin", 1024, schema.sha256, [rows.tobytes()])
            run_id = requester.upload(project, tmp_path / "r.bin").run_id  # waits for custodian
            watches = [requester.watch(project, run_id) for _ in range(2)]
            for watch in watches:
                assert next(watch).state == pb.RUN_STATE_WAITING_FOR_UPLOADS
            with pytest.raises(ServerError) as err:
                next(requester.watch(project, run_id))
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED

            waited: list[pb.RunProgress] = []
            waiter = threading.Thread(target=lambda: waited.append(requester.wait(project, run_id)))
            waiter.start()
            write_encodings(tmp_path / "c.bin", 1024, schema.sha256, [rows.tobytes()])
            custodian.upload(project, tmp_path / "c.bin")  # a call thread is still free
            waiter.join(timeout=30)
            assert [w.state for w in waited] == [pb.RUN_STATE_DONE]
            for watch in watches:
                assert list(watch)[-1].state == pb.RUN_STATE_DONE
            # The finished watches gave their places back.
            assert list(requester.watch(project, run_id))[-1].state == pb.RUN_STATE_DONE
    finally:
        server.stop(grace=1)


def test_metrics_over_tls_answer_only_clients_with_a_certificate_from_the_client_ca(
    tmp_path: Path, identities: Identities
) -> None:
    pki = identities.pki
    server = start_server(
        tmp_path / "data",
        "127.0.0.1:0",
        ServerTls(pki.server_cert, pki.server_key, pki.ca_cert),
        metrics_listen="127.0.0.1:0",
        metrics_tls=True,
    )
    try:
        url = f"https://localhost:{server.metrics_port}/metrics"
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(pki.party_certs["requester"], pki.party_keys["requester"])
        text = urllib.request.urlopen(url, context=context, timeout=10).read().decode()
        assert "blindlink_runs_queued" in text
        anonymous = ssl.create_default_context(cafile=str(pki.ca_cert))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(url, context=anonymous, timeout=10).read()
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(url.replace("https", "http"), timeout=10).read()
    finally:
        server.stop(grace=1)


def test_metrics_over_tls_need_the_servers_tls_files(tmp_path: Path) -> None:
    with pytest.raises(BlindlinkError, match="metrics over TLS"):
        start_server(
            tmp_path / "data", "127.0.0.1:0", None, metrics_listen="127.0.0.1:0", metrics_tls=True
        )


def test_data_directory_is_owner_only_whatever_the_umask(
    tmp_path: Path,
    launch: Callable[..., ServerProcess],
    identities: Identities,
    schema: LinkageSchema,
) -> None:
    """Database (with its WAL files), encodings, key and lock: readable by the server's user
    only, even when the server starts with a permissive umask."""
    previous = os.umask(0o022)
    try:
        server = launch().start()
    finally:
        os.umask(previous)
    requester_rows, custodian_rows, _ = planted_pairs(50, 5, seed=13)
    with server.client("requester") as requester, server.client("custodian") as custodian:
        project = requester.create_project(signed_agreement(identities, schema, "modes"))
        custodian.upload(
            project.project_id, encodings_file(tmp_path / "c.bin", custodian_rows, schema.sha256)
        )
        run_id = requester.upload(
            project.project_id, encodings_file(tmp_path / "r.bin", requester_rows, schema.sha256)
        ).run_id
        assert requester.wait(project.project_id, run_id).state == pb.RUN_STATE_DONE
        paths = [server.data_dir, *server.data_dir.rglob("*")]
        names = {p.name for p in paths}
        assert {"blindlink.db", "blindlink.db-wal", "server-signing.key"} <= names
        assert any(p.parent.name == "encodings" for p in paths)
        loose = {str(p): oct(p.stat().st_mode & 0o777) for p in paths if p.stat().st_mode & 0o077}
        assert loose == {}
    assert server.terminate() == 0
