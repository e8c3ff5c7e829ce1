"""`blindlink serve` as a real process, for tests that signal or kill it, and agreements for
it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from conftest import Identities, agreement_bytes
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blindlink.client.linkage_client import LinkageClient
from blindlink.encoding.schema import LinkageSchema
from blindlink.security.tls import channel_credentials

START_TIMEOUT_S = 30.0


class ServerProcess:
    """A server process on `data_dir` with mutual TLS, configured by a TOML file; restartable
    on the same data directory. Its log (JSON lines) accumulates in `log_path`."""

    def __init__(self, work: Path, identities: Identities, **settings: Any) -> None:
        self.work = work
        self.identities = identities
        self.data_dir = work / "data"
        self.log_path = work / "server.log"
        self.port_file = work / "port"
        pki = identities.pki
        config = {
            "data_dir": str(self.data_dir),
            "listen": "127.0.0.1:0",
            "port_file": str(self.port_file),
            "tls_cert": str(pki.server_cert),
            "tls_key": str(pki.server_key),
            "tls_client_ca": str(pki.ca_cert),
            "purge_interval": 0.5,
            "log_format": "json",
            **settings,
        }
        self.config_path = work / "server.toml"
        self.config_path.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in config.items()))
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> ServerProcess:
        """Start and wait until it reports SERVING."""
        self.port_file.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "blindlink", "serve", "--config", str(self.config_path)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # its own process group: a kill takes its workers too
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.02)
        self.address = f"127.0.0.1:{self.port_file.read_text().strip()}"
        assert self.health() == health_pb2.HealthCheckResponse.SERVING
        return self

    def client(self, role: str) -> LinkageClient:
        return LinkageClient(self.address, role, self.identities.tls(role))

    def channel(self, role: str = "requester") -> grpc.Channel:
        tls = self.identities.tls(role)
        return grpc.secure_channel(self.address, channel_credentials(tls.ca, tls.cert, tls.key))

    def health(self) -> int:
        with self.channel() as channel:
            return (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service="blindlink.v1.Linkage"), timeout=5)
                .status
            )

    def kill(self) -> None:
        """SIGKILL the server and every process it started."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM; the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill_if_running(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()

    def log_records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query on the data directory's database (read-only)."""
        uri = f"{(self.data_dir / 'blindlink.db').resolve().as_uri()}?mode=ro"
        with sqlite3.connect(uri, uri=True) as db:
            return db.execute(sql, args).fetchall()


def server_launcher(
    tmp_path: Path, identities: Identities
) -> Iterator[Callable[..., ServerProcess]]:
    """Fixture body (a module declares `pytest.fixture(name="launch")(server_launcher)`):
    makes ServerProcess objects (settings as keyword arguments) and kills, at the end of the
    test, any still running, so that a failed test leaves no server behind."""
    servers: list[ServerProcess] = []

    def make(**settings: Any) -> ServerProcess:
        servers.append(ServerProcess(tmp_path, identities, **settings))
        return servers[-1]

    yield make
    for server in servers:
        server.kill_if_running()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def signed_agreement(
    identities: Identities, schema: LinkageSchema, reference: str, **settings: Any
) -> bytes:
    """An agreement both parties signed (conftest's agreement_bytes, for any scope). Its runs
    decide at a fixed threshold of 0.8 unless `settings` say otherwise: the tests that use it
    plant exact copies among random encodings and check the server's lifecycle, not how it
    decides (tests/test_decision.py and test_run_decisions.py do)."""
    if not {"threshold", "target", "threshold_bounds", "fallback_threshold"} & set(settings):
        settings = {"threshold": 0.8, **settings}
    return agreement_bytes(identities, schema, reference, **settings)
