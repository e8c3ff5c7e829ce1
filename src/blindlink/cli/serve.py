"""`blindlink serve`: run the linkage server until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from blindlink.server.app import start_server


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    running = start_server(Path(args.data_dir), args.listen)
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
