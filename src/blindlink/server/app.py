"""Building, starting and stopping the linkage server.

Start-up binds the port first and reports NOT_SERVING (Linkage calls are answered UNAVAILABLE)
until the store is open, leftovers of a crash are removed, unfinished runs are requeued and
retention is applied; then SERVING. Stopping reports NOT_SERVING, refuses new calls, lets calls
in flight and a running match finish within the grace period, and leaves anything unfinished to
be resumed at the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from blindlink._generated import linkage_pb2, linkage_pb2_grpc
from blindlink.errors import BlindlinkError
from blindlink.matching import kernel
from blindlink.security.keys import generate_signing_key, load_private_key, public_key_text
from blindlink.security.pki import read_certificates
from blindlink.security.tls import is_loopback, server_credentials
from blindlink.server.admission import (
    MAX_RECEIVE_BYTES,
    Admission,
    BufferBudget,
    CallLimits,
    pool_size,
)
from blindlink.server.config import ServerTls
from blindlink.server.identity import PartyCertificates, PartyResolver
from blindlink.server.interceptors import (
    AdmissionInterceptor,
    DecodingInterceptor,
    ErrorInterceptor,
    MetricsInterceptor,
    RequestLogInterceptor,
    StreamLimits,
)
from blindlink.server.metrics import MetricsEndpoint, ServerMetrics
from blindlink.server.retention import Purger, purge_once
from blindlink.server.runs import MatchingSettings, RunQueue
from blindlink.server.servicer import LinkageServicer
from blindlink.store.directory import SIGNING_KEY_NAME
from blindlink.store.sqlite import Altered, Store

SERVICE_NAME = linkage_pb2.DESCRIPTOR.services_by_name["Linkage"].full_name
# A release lists up to a row reference per match and party (a few bytes each).
MAX_SEND_BYTES = 64 * 1024 * 1024

log = logging.getLogger("blindlink.server")


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
    stopping: threading.Event = field(default_factory=threading.Event)
    metrics: MetricsEndpoint | None = None
    admission: Admission | None = None

    @property
    def metrics_port(self) -> int | None:
        return self.metrics.port if self.metrics else None

    def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, refuse new calls, give calls in flight and a running match
        `grace` seconds (in all) to finish, then stop; unfinished runs resume at next start."""
        deadline = time.monotonic() + grace
        self.health.enter_graceful_shutdown()
        self.stopping.set()
        self.server.stop(grace).wait()
        self.runs.stop(timeout=max(0.0, deadline - time.monotonic()))
        self.purger.stop()
        if self.metrics:
            self.metrics.stop()
        self.store.close()
        log.info("stopped")


def server_signing_key(data_dir: Path) -> Ed25519PrivateKey:
    """The key that signs the audit log, made on first start; its public half sits beside it."""
    path = data_dir / f"{SIGNING_KEY_NAME}.key"
    if not path.exists():
        generate_signing_key(data_dir, SIGNING_KEY_NAME)
    return load_private_key(path)


class _LinkageWhenReady(grpc.GenericRpcHandler):
    """The Linkage service's handlers once the servicer is ready; until then every Linkage
    call is answered UNAVAILABLE."""

    def __init__(self) -> None:
        self._ready: grpc.GenericRpcHandler | None = None

    def attach(self, servicer: LinkageServicer) -> None:
        registration = _Registration()
        linkage_pb2_grpc.add_LinkageServicer_to_server(servicer, registration)
        self._ready = registration.handler

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        if self._ready is not None:
            return self._ready.service(handler_call_details)
        if handler_call_details.method.startswith(f"/{SERVICE_NAME}/"):
            return _STARTING
        return None


class _Registration:
    """Stands in for a server to collect the handler the generated code registers."""

    handler: grpc.GenericRpcHandler

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        (self.handler,) = handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        """Only the generic handler is used."""


def _refuse_while_starting(request: Any, context: grpc.ServicerContext) -> None:
    context.abort(grpc.StatusCode.UNAVAILABLE, "the server is starting; retry in a moment")


_STARTING: grpc.RpcMethodHandler[Any, None] = grpc.unary_unary_rpc_method_handler(
    _refuse_while_starting
)


def start_server(
    data_dir: Path,
    listen: str,
    tls: ServerTls | None,
    workers: int = 32,
    purge_interval: float = 60.0,
    matching: MatchingSettings | None = None,
    *,
    streams: StreamLimits | None = None,
    calls: CallLimits | None = None,
    metrics_listen: str | None = None,
    metrics_tls: bool = False,
) -> RunningServer:
    """Serve on `listen` (HOST:PORT): bind, then open the store, resume unfinished runs and
    report SERVING. Metrics are served over HTTP on `metrics_listen` if given, over HTTPS to
    clients with a certificate from the client CA with `metrics_tls`. `calls` shares the
    `workers` call threads out (see `admission`).

    Without `tls` the server trusts the party role callers claim, so it refuses to listen
    anywhere but on loopback."""
    if tls is None and not is_loopback(listen):
        raise BlindlinkError(
            f"refusing to serve without TLS on {listen}: plaintext is allowed "
            "on loopback addresses only"
        )
    kernel.active()  # choose the Dice kernel's code path now: logged at start, refused if unknown
    credentials = server_credentials(tls.cert, tls.key, tls.client_ca) if tls else None
    metrics = ServerMetrics()
    limits = calls or CallLimits()
    parties = PartyCertificates()
    # Without TLS callers are not told apart by certificate: none counts as an outsider.
    admission = Admission(workers, limits, parties.__contains__ if tls else lambda caller: True)
    server = grpc.server(
        futures.ThreadPoolExecutor(pool_size(workers), thread_name_prefix="blindlink-rpc"),
        interceptors=[
            RequestLogInterceptor(),
            MetricsInterceptor(metrics),
            ErrorInterceptor(),
            AdmissionInterceptor(
                admission,
                BufferBudget(limits.max_buffered_bytes),
                streams or StreamLimits(),
            ),
            DecodingInterceptor(),
        ],
        options=[
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ],
    )
    linkage = _LinkageWhenReady()
    server.add_generic_rpc_handlers((linkage,))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    for name in (SERVICE_NAME, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    port = (
        server.add_secure_port(listen, credentials)
        if credentials
        else server.add_insecure_port(listen)
    )
    if port == 0:
        raise BlindlinkError(f"could not listen on {listen}")
    server.start()
    endpoint = None
    try:
        if metrics_tls and tls is None:
            raise BlindlinkError("metrics over TLS need the server's TLS certificate and key")
        metrics_files = tls if metrics_tls else None
        endpoint = (
            MetricsEndpoint(metrics, metrics_listen, metrics_files) if metrics_listen else None
        )
        log.info("listening on port %d (%s); starting", port, "TLS" if tls else "plaintext")
        running = _open(data_dir, server, port, health_servicer, purge_interval, matching, metrics)
    except BaseException:
        server.stop(None)
        if endpoint:
            endpoint.stop()
        raise
    running.metrics = endpoint
    running.admission = admission
    parties.load(_stored_agreements(running.store))
    metrics.watch_runs(running.store, running.runs)
    linkage.attach(
        LinkageServicer(
            running.store,
            running.runs,
            PartyResolver(read_certificates(tls.client_ca, "client CA") if tls else None, parties),
            running.public_key,
            running.stopping,
            max_watchers=max(1, limits.streams(workers) // 2),
        )
    )
    for name in (SERVICE_NAME, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving, data in %s", data_dir)
    return running


def _stored_agreements(store: Store) -> list[bytes]:
    """The stored projects' agreements, but for those altered (the server acts on none)."""
    agreements = []
    for project_id in store.project_ids():
        try:
            raw = store.agreement(project_id)
        except Altered:
            continue
        if raw is not None:
            agreements.append(raw)
    return agreements


def _open(
    data_dir: Path,
    server: grpc.Server,
    port: int,
    health_servicer: health.HealthServicer,
    purge_interval: float,
    matching: MatchingSettings | None,
    metrics: ServerMetrics,
) -> RunningServer:
    """Open the store, apply retention, requeue unfinished runs, start the background work."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    key = server_signing_key(Path(data_dir))
    store = Store(data_dir, key)
    try:
        purge_once(store)
        runs = RunQueue(store, matching or MatchingSettings.local(), metrics.observe_key_loads)
        purger = Purger(store, purge_interval)
        runs.start()
        purger.start()
    except BaseException:
        store.close()
        raise
    return RunningServer(server, port, store, runs, purger, health_servicer, public_key_text(key))
