"""`blindlink serve`: run the linkage server until SIGTERM or SIGINT, then stop gracefully."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from blindlink.matching.engine import MatchingLimits
from blindlink.matching.executors import DaskExecutor
from blindlink.server.app import start_server
from blindlink.server.config import ServerConfig, load_config
from blindlink.server.interceptors import StreamLimits
from blindlink.server.logs import configure_logging
from blindlink.server.runs import MatchingSettings

log = logging.getLogger("blindlink.server")
SIGNAL_POLL_S = 0.2


def serve(args: argparse.Namespace) -> int:
    config = load_config(vars(args), os.environ, args.config)
    configure_logging(config.log_format, config.log_level)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    running = start_server(
        config.data_path(),
        config.listen,
        config.server_tls(),
        config.rpc_workers,
        config.purge_interval,
        _matching(config),
        streams=StreamLimits(
            config.stream_idle_timeout,
            config.stream_max_duration,
            first_message_timeout=config.first_message_timeout,
        ),
        calls=config.call_limits(),
        metrics_listen=config.metrics_listen,
        metrics_tls=config.metrics_tls,
    )
    print(f"audit log signing key: {running.public_key}", flush=True)
    if running.metrics_port is not None:
        log.info("metrics on port %d", running.metrics_port)
    if config.port_file:
        tmp = Path(f"{config.port_file}.partial")
        tmp.write_text(f"{running.port}\n")
        os.replace(tmp, config.port_file)
    # Poll: a signal may arrive on another thread, and the Python handler runs only when the
    # main thread wakes up (an untimed wait could sleep through it).
    while not stopping.wait(SIGNAL_POLL_S):
        pass
    log.info("shutting down (grace %g s)", config.shutdown_grace)
    running.stop(config.shutdown_grace)
    return 0


def _matching(config: ServerConfig) -> MatchingSettings:
    limits = MatchingLimits(
        config.max_candidate_pairs, int(config.max_memory_gb * 2**30), config.max_comparisons
    )
    if config.dask_scheduler:
        # The cluster's workers are not known here; memory is checked as for one copy each
        # of the server and a worker.
        return MatchingSettings(DaskExecutor(config.dask_scheduler), 1, limits)
    return MatchingSettings.local(config.matching_workers, limits)
