"""`blindlink serve`: run the linkage server until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from blindlink.errors import InputError
from blindlink.matching.engine import MatchingLimits
from blindlink.matching.executors import DaskExecutor
from blindlink.server.app import ServerTls, start_server
from blindlink.server.runs import MatchingSettings


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    running = start_server(
        Path(args.data_dir),
        args.listen,
        _tls(args),
        purge_interval=args.purge_interval,
        matching=_matching(args),
    )
    print(f"audit log signing key: {running.public_key}", flush=True)
    if args.port_file:
        tmp = Path(f"{args.port_file}.partial")
        tmp.write_text(f"{running.port}\n")
        os.replace(tmp, args.port_file)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()
    logging.getLogger("blindlink.server").info("shutting down")
    running.stop()
    return 0


def _tls(args: argparse.Namespace) -> ServerTls | None:
    if args.insecure:
        return None
    if args.tls_dir:
        return ServerTls.from_dir(args.tls_dir)
    if args.cert and args.key and args.client_ca:
        return ServerTls(args.cert, args.key, args.client_ca)
    raise InputError(
        args.listen,
        "no TLS material: pass --tls-dir (or --cert, --key and "
        "--client-ca), or --insecure for development on loopback",
    )


def _matching(args: argparse.Namespace) -> MatchingSettings:
    limits = MatchingLimits(args.max_candidate_pairs, int(args.max_memory_gb * 2**30))
    if args.dask_scheduler:
        # The cluster's workers are not known here; memory is checked as for one copy each
        # of the server and a worker.
        return MatchingSettings(DaskExecutor(args.dask_scheduler), 1, limits)
    return MatchingSettings.local(args.matching_workers, limits)
