"""Building, starting and stopping the linkage server."""

from __future__ import annotations

import logging
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from blindlink._generated import linkage_pb2, linkage_pb2_grpc
from blindlink.errors import BlindlinkError
from blindlink.security.keys import generate_signing_key, load_private_key, public_key_text
from blindlink.security.tls import is_loopback, server_credentials
from blindlink.server.identity import PartyResolver
from blindlink.server.interceptors import ErrorInterceptor
from blindlink.server.retention import Purger
from blindlink.server.runs import MatchingSettings, RunQueue
from blindlink.server.servicer import LinkageServicer
from blindlink.store.sqlite import Store

SERVICE_NAME = linkage_pb2.DESCRIPTOR.services_by_name["Linkage"].full_name
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SIGNING_KEY_NAME = "server-signing"

log = logging.getLogger("blindlink.server")


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate and key, and the CA whose client certificates it accepts."""

    cert: Path
    key: Path
    client_ca: Path

    @classmethod
    def from_dir(cls, directory: Path) -> ServerTls:
        """The layout `blindlink pki init` writes: server.pem, server.key, ca.pem."""
        return cls(directory / "server.pem", directory / "server.key", directory / "ca.pem")


@dataclass
class RunningServer:
    """A started server; `port` is the bound port (useful when asked for port 0)."""

    server: grpc.Server
    port: int
    store: Store
    runs: RunQueue
    purger: Purger
    health: health.HealthServicer
    public_key: str

    def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, stop taking calls, let calls in flight finish, stop the workers."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.purger.stop()
        self.runs.stop(timeout=grace)
        self.store.close()


def server_signing_key(data_dir: Path) -> Ed25519PrivateKey:
    """The key that signs the audit log, made on first start; its public half sits beside it."""
    path = data_dir / f"{SIGNING_KEY_NAME}.key"
    if not path.exists():
        generate_signing_key(data_dir, SIGNING_KEY_NAME)
    return load_private_key(path)


def start_server(
    data_dir: Path,
    listen: str,
    tls: ServerTls | None,
    workers: int = 16,
    purge_interval: float = 60.0,
    matching: MatchingSettings | None = None,
) -> RunningServer:
    """Open the store, resume unfinished runs and serve on `listen` (HOST:PORT).

    Without `tls` the server trusts the party role callers claim, so it refuses to listen
    anywhere but on loopback."""
    if tls is None and not is_loopback(listen):
        raise BlindlinkError(
            f"refusing to serve without TLS on {listen}: plaintext is allowed "
            "on loopback addresses only"
        )
    credentials = server_credentials(tls.cert, tls.key, tls.client_ca) if tls else None
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    key = server_signing_key(Path(data_dir))
    store = Store(data_dir, key)
    runs = RunQueue(store, matching or MatchingSettings.local())
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blindlink-rpc"),
        interceptors=[ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    servicer = LinkageServicer(
        store, runs, PartyResolver(tls=tls is not None), public_key_text(key)
    )
    linkage_pb2_grpc.add_LinkageServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = (
        server.add_secure_port(listen, credentials)
        if credentials
        else server.add_insecure_port(listen)
    )
    if port == 0:
        store.close()
        raise BlindlinkError(f"could not listen on {listen}")
    purger = Purger(store, purge_interval)
    runs.start()
    purger.start()
    server.start()
    for name in (SERVICE_NAME, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving on port %d (%s), data in %s", port, "TLS" if tls else "plaintext", data_dir)
    return RunningServer(server, port, store, runs, purger, health_servicer, public_key_text(key))
