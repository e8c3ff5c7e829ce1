"""Building, starting and stopping the linkage server."""

from __future__ import annotations

import logging
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from blindlink._generated import linkage_pb2, linkage_pb2_grpc
from blindlink.server.interceptors import ErrorInterceptor
from blindlink.server.runs import RunQueue
from blindlink.server.servicer import LinkageServicer
from blindlink.store.sqlite import Store

SERVICE_NAME = linkage_pb2.DESCRIPTOR.services_by_name["Linkage"].full_name
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

log = logging.getLogger("blindlink.server")


@dataclass
class RunningServer:
    """A started server; `port` is the bound port (useful when asked for port 0)."""

    server: grpc.Server
    port: int
    store: Store
    runs: RunQueue
    health: health.HealthServicer

    def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, stop taking calls, let calls in flight finish, stop the runner."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.runs.stop(timeout=grace)
        self.store.close()


def start_server(data_dir: Path, listen: str, workers: int = 16) -> RunningServer:
    """Open the store, resume unfinished runs and serve on `listen` (HOST:PORT)."""
    store = Store(data_dir)
    runs = RunQueue(store)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blindlink-rpc"),
        interceptors=[ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    linkage_pb2_grpc.add_LinkageServicer_to_server(LinkageServicer(store, runs), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(listen)
    if port == 0:
        store.close()
        raise OSError(f"could not listen on {listen}")
    runs.start()
    server.start()
    for name in (SERVICE_NAME, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving on port %d, data in %s", port, data_dir)
    return RunningServer(server, port, store, runs, health_servicer)
