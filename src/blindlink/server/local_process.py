"""A `blindlink serve` process on this machine: what the demo and the benchmarks run against."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from blindlink.errors import BlindlinkError
from blindlink.extras import require_extra

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class LocalServer:
    address: str  # 127.0.0.1:PORT
    process: subprocess.Popen[bytes]
    log: Path  # the server's output


@contextmanager
def local_server(data_dir: Path, tls_dir: Path, *options: str) -> Iterator[LocalServer]:
    """Serve `data_dir` on a free localhost port with mutual TLS from `tls_dir` (and any other
    `serve` options); yield once it serves, stop it gracefully (SIGTERM) at the end."""
    require_extra("server")
    data_dir.mkdir(parents=True, exist_ok=True)
    port_file = data_dir / "port"
    port_file.unlink(missing_ok=True)
    log_path = data_dir / "server.log"
    command = [sys.executable, "-m", "blindlink", "serve", "--data-dir", str(data_dir)]
    command += ["--listen", "127.0.0.1:0", "--port-file", str(port_file)]
    command += ["--tls-dir", str(tls_dir), *options]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not port_file.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise BlindlinkError(f"the server did not start; see {log_path}")
                time.sleep(0.05)
            address = f"127.0.0.1:{port_file.read_text().strip()}"
            yield LocalServer(address, process, log_path)
        finally:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
