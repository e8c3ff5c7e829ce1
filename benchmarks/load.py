"""Load on one `blindlink serve` process over loopback with mutual TLS.

`--projects` projects at once; in each, the custodian and the requester upload `--records`
encodings each at the same time (the blindlink client, 1 MiB chunks), then both poll GetStatus
every second until the run is done and fetch their releases. Every call is timed; latency is
per RPC (p50, p99, max over every call of that RPC), upload throughput is the payload bytes of
all uploads over the wall time from the first upload's start to the last one's end. Peak memory
is VmHWM from /proc of the server process and, separately, of its matching workers.

Meanwhile an attacker holds `--stalled` upload streams open that never send a message, from
four certificates of the parties' CA that no agreement names (reopening each within a quarter
of a second of the server ending it), and the server's health is checked every half second:
its latency is reported like any call's, as "Health.Check".

Bounded: a fixed number of calls per project (polls at most one a second) and `--max-seconds`
in all; a project unfinished by then is reported, and the server is stopped either way.
Writes benchmarks/results/load.json.

    python benchmarks/load.py [--projects 20] [--records 50000] [--stalled 64] [--max-seconds 900]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blindlink._generated import linkage_pb2 as pb
from blindlink._generated import linkage_pb2_grpc as pb_grpc
from blindlink.benchmarking.parties import ROLES, Parties
from blindlink.benchmarking.results import write_result
from blindlink.client.linkage_client import LinkageClient, ServerError
from blindlink.encoding.encodings_file import write_encodings
from blindlink.encoding.schema import LinkageSchema, default_schema_path, load_schema
from blindlink.security.pki import issue_client_certificate
from blindlink.security.tls import channel_credentials
from blindlink.server.local_process import local_server

SHARED_FRACTION = 0.1
POLL_INTERVAL_S = 1.0
HEALTH_INTERVAL_S = 0.5
REOPEN_INTERVAL_S = 0.25
STALLING_CERTIFICATES = 4
T = TypeVar("T")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=20)
    parser.add_argument("--records", type=int, default=50_000, help="encodings per upload")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop after this")
    parser.add_argument("--rpc-workers", type=int, default=32, help="the server's setting")
    parser.add_argument("--stalled", type=int, default=64, help="stalled streams held open")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(tmp))


@dataclass
class Calls:
    """Every call's duration and outcome, by RPC."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def timed(self, rpc: str, call: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            result = call()
        except ServerError as exc:
            with self.lock:
                self.failures[rpc].append(exc.code.name)
            raise
        with self.lock:
            self.seconds[rpc].append(time.perf_counter() - start)
        return result


@dataclass
class Project:
    number: int
    upload_spans: list[tuple[float, float]] = field(default_factory=list)
    released: dict[str, int] = field(default_factory=dict)
    error: str = ""


def run(args: argparse.Namespace, work: Path) -> None:
    schema = load_schema(default_schema_path())
    parties = Parties.create(work)
    files = _encodings(work, args.records, schema)
    megabytes = 2 * args.projects * args.records * schema.bit_length / 8 / 1e6
    print(
        f"{args.projects} projects x 2 uploads of {args.records} encodings "
        f"({megabytes:.0f} MB in all)",
        flush=True,
    )
    load_before = os.getloadavg()[0]
    workers = ("--rpc-workers", str(args.rpc_workers))
    with local_server(work / "server", parties.tls_dir, *workers) as server:
        peaks = _PeakMemory(server.process.pid)
        peaks.start()
        calls = Calls()
        crowd = _Crowd(server.address, parties, work, args.stalled, calls)
        crowd.start()
        projects = [Project(i) for i in range(args.projects)]
        started = time.monotonic()
        deadline = started + args.max_seconds
        threads = [
            threading.Thread(
                target=_project_flow,
                args=(project, server.address, parties, schema, files, calls, deadline),
                daemon=True,
            )
            for project in projects
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
        finally:
            wall = time.monotonic() - started
            crowd.stop()
            peaks.stop()
            exit_status = _stop(server.process)
    loads = (load_before, os.getloadavg()[0])
    _report(args, schema, projects, calls, peaks, wall, megabytes, exit_status, loads, crowd.ended)


def _stop(server: subprocess.Popen[bytes]) -> int:
    """SIGTERM, as an operator stops the server; its exit status (killed after 60 s)."""
    server.send_signal(signal.SIGTERM)
    try:
        return server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()
        return server.wait()


def _encodings(work: Path, records: int, schema: LinkageSchema) -> dict[str, Path]:
    """One custodian file and one requester batch sharing SHARED_FRACTION of their records
    (exact copies), used by every project."""
    rng = np.random.default_rng(0)
    rows = {
        role: rng.integers(0, 256, (records, schema.bit_length // 8), dtype=np.uint8)
        for role in ROLES
    }
    shared = int(records * SHARED_FRACTION)
    rows["custodian"][rng.choice(records, shared, replace=False)] = rows["requester"][
        rng.choice(records, shared, replace=False)
    ]
    files = {}
    for role, data in rows.items():
        files[role] = work / f"{role}.bin"
        write_encodings(files[role], schema.bit_length, schema.sha256, [data.tobytes()])
    return files


def _project_flow(
    project: Project,
    address: str,
    parties: Parties,
    schema: LinkageSchema,
    files: dict[str, Path],
    calls: Calls,
    deadline: float,
) -> None:
    """Create the project, upload both sides at once, poll until done, fetch both releases."""
    clients = {role: parties.client(address, role) for role in ROLES}
    try:
        agreement = parties.agreement(f"load benchmark {project.number}", schema)
        project_id = calls.timed(
            "CreateProject", lambda: clients["requester"].create_project(agreement)
        ).project_id
        receipts: dict[str, pb.UploadReceipt] = {}

        def upload(role: str) -> None:
            start = time.monotonic()
            receipts[role] = calls.timed(
                "Upload", lambda: clients[role].upload(project_id, files[role])
            )
            project.upload_spans.append((start, time.monotonic()))

        uploaders = [
            threading.Thread(target=_recording, args=(project, upload, role)) for role in ROLES
        ]
        for thread in uploaders:
            thread.start()
        for thread in uploaders:
            thread.join()
        run_id = receipts["requester"].run_id
        pollers = [
            threading.Thread(
                target=_recording,
                args=(project, _fetch_release, project, clients[role], project_id, run_id),
                kwargs={"calls": calls, "deadline": deadline},
            )
            for role in ROLES
        ]
        for thread in pollers:
            thread.start()
        for thread in pollers:
            thread.join()
    except (ServerError, KeyError) as exc:
        project.error = project.error or f"{type(exc).__name__}: {exc}"
    finally:
        for client in clients.values():
            client.close()


def _recording(
    project: Project, fn: Callable[..., object], *args: object, **kwargs: object
) -> None:
    """Run `fn` on a thread of its own, recording a failed call as the project's error."""
    try:
        fn(*args, **kwargs)
    except ServerError as exc:
        project.error = project.error or str(exc)


def _fetch_release(
    project: Project,
    client: LinkageClient,
    project_id: str,
    run_id: str,
    calls: Calls,
    deadline: float,
) -> None:
    while time.monotonic() < deadline:
        status = calls.timed("GetStatus", lambda: client.status(project_id))
        run = next(r for r in status.runs if r.run_id == run_id)
        if run.state == pb.RUN_STATE_DONE:
            release = calls.timed("GetRelease", lambda: client.release(project_id, run_id))
            project.released[client.party] = release.match_count
            return
        if run.state == pb.RUN_STATE_FAILED:
            project.error = f"run failed: {run.message}"
            return
        time.sleep(POLL_INTERVAL_S)


class _Crowd:
    """`count` upload streams that never send a message, from certificates no agreement names,
    each reopened when the server ends it; and a timed health check every HEALTH_INTERVAL_S."""

    def __init__(
        self, address: str, parties: Parties, work: Path, count: int, calls: Calls
    ) -> None:
        self.count = count
        self.ended: Counter[str] = Counter()  # how the server ended stalled streams
        self._calls = calls
        self._stop = threading.Event()
        self._channels = []
        pki = parties.pki
        for i in range(STALLING_CERTIFICATES):
            cert, key = issue_client_certificate(
                pki.ca_cert, pki.ca_key, f"stalling{i}", work / f"stalling{i}"
            )
            credentials = channel_credentials(pki.ca_cert, cert, key)
            self._channels.append(grpc.secure_channel(address, credentials))
        self._threads = [
            threading.Thread(target=self._stall, daemon=True),
            threading.Thread(target=self._check_health, daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        for channel in self._channels:
            channel.close()

    def _open(self, stub: pb_grpc.LinkageStub) -> tuple[grpc.Future, threading.Event]:
        """An upload that sends nothing until its event is set (or the crowd stops)."""
        ended = threading.Event()

        def silent() -> Iterator[pb.UploadRequest]:
            while not (ended.wait(0.5) or self._stop.is_set()):
                pass
            yield from ()

        return stub.Upload.future(silent()), ended

    def _stall(self) -> None:
        stubs = [pb_grpc.LinkageStub(c) for c in self._channels]
        streams = [self._open(stubs[i % len(stubs)]) for i in range(self.count)]
        while not self._stop.wait(REOPEN_INTERVAL_S):
            for i, (stream, ended) in enumerate(streams):
                if stream.done():
                    ended.set()
                    self.ended[stream.code().name] += 1
                    streams[i] = self._open(stubs[i % len(stubs)])
        for stream, ended in streams:
            ended.set()
            stream.cancel()

    def _check_health(self) -> None:
        health = health_pb2_grpc.HealthStub(self._channels[0])
        request = health_pb2.HealthCheckRequest(service="blindlink.v1.Linkage")
        while not self._stop.wait(HEALTH_INTERVAL_S):
            start = time.perf_counter()
            try:
                health.Check(request, timeout=5)
            except grpc.RpcError as exc:
                with self._calls.lock:
                    self._calls.failures["Health.Check"].append(exc.code().name)
                continue
            with self._calls.lock:
                self._calls.seconds["Health.Check"].append(time.perf_counter() - start)


class _PeakMemory:
    """Samples VmHWM (peak resident memory) of a process and of its descendants."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.server_kib = 0
        self.worker_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def _sample(self) -> None:
        self.server_kib = max(self.server_kib, _vm_hwm_kib(self.pid))
        for child in _descendants(self.pid):
            self.worker_kib = max(self.worker_kib, _vm_hwm_kib(child))


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return children + [d for c in children for d in _descendants(c)]


def _percentiles(samples: list[float]) -> dict[str, float | int]:
    ordered = sorted(samples)
    if not ordered:
        return {"calls": 0}
    return {
        "calls": len(ordered),
        "p50_s": round(statistics.median(ordered), 4),
        "p99_s": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 4),
        "max_s": round(ordered[-1], 4),
    }


def _report(
    args: argparse.Namespace,
    schema: LinkageSchema,
    projects: list[Project],
    calls: Calls,
    peaks: _PeakMemory,
    wall: float,
    megabytes: float,
    exit_status: int,
    loads: tuple[float, float],
    crowd_ended: Counter[str],
) -> None:
    spans = [span for p in projects for span in p.upload_spans]
    upload_wall = max(e for _, e in spans) - min(s for s, _ in spans) if spans else 0.0
    complete = [p for p in projects if len(p.released) == 2]
    expected_matches = int(args.records * SHARED_FRACTION)
    wrong = [p.number for p in complete if set(p.released.values()) != {expected_matches}]
    failures = {rpc: len(codes) for rpc, codes in calls.failures.items()}
    total_calls = sum(len(s) for s in calls.seconds.values()) + sum(failures.values())
    upload_p99 = _percentiles(calls.seconds["Upload"]).get("p99_s", float("inf"))
    health_max = _percentiles(calls.seconds["Health.Check"]).get("max_s", float("inf"))
    result = {
        "method": (
            f"{args.projects} projects at once against one `blindlink serve` process (mutual "
            f"TLS, loopback, rpc_workers {args.rpc_workers}, default matching); per project "
            f"both parties upload {args.records} encodings of {schema.bit_length} bits at the "
            "same time with the blindlink client, then poll GetStatus every second and fetch "
            f"their release; meanwhile {args.stalled} upload streams that never send a message "
            f"are held open from {STALLING_CERTIFICATES} certificates no agreement names "
            "(reopened as the server ends them) and health is checked every "
            f"{HEALTH_INTERVAL_S:g} s; the benchmark process and the server share the machine. "
            "Latencies are per call, over every call of each RPC; peak memory is VmHWM from "
            "/proc (server process; largest matching worker)."
        ),
        "projects": args.projects,
        "records_per_upload": args.records,
        "projects_complete": len(complete),
        "projects_with_wrong_results": wrong,
        "project_errors": [p.error for p in projects if p.error],
        "wall_seconds": round(wall, 1),
        "calls": total_calls,
        "calls_per_second": round(total_calls / wall, 1) if wall else 0.0,
        "upload_megabytes": round(megabytes, 1),
        "upload_wall_seconds": round(upload_wall, 2),
        "upload_megabytes_per_second": round(megabytes / upload_wall, 1) if upload_wall else 0,
        "latency": {rpc: _percentiles(s) for rpc, s in sorted(calls.seconds.items())},
        "failures": failures,
        "stalled_streams": args.stalled,
        "stalled_streams_ended_by_server": dict(crowd_ended),
        "server_peak_rss_mib": round(peaks.server_kib / 1024, 1),
        "matching_worker_peak_rss_mib": round(peaks.worker_kib / 1024, 1),
        "server_exit_status": exit_status,
        # Other work on the machine shows here (the benchmark alone adds up to about 2).
        "load_average_1min_before_and_after": [round(x, 2) for x in loads],
        "targets": {
            "zero_unexpected_failures": not failures
            and not wrong
            and len(complete) == len(projects),
            "upload_p99_under_5_s": upload_p99 < 5.0,
            "health_max_under_1_s": health_max < 1.0,
        },
    }
    path = write_result("load", result)
    print(f"projects complete     {len(complete)}/{len(projects)} in {wall:.0f} s", flush=True)
    print(f"uploads               {megabytes:.0f} MB in {upload_wall:.1f} s")
    for rpc, stats in result["latency"].items():
        print(f"{rpc:<21} {stats}")
    print(f"failures              {failures or 'none'}")
    print(
        f"peak memory           server {result['server_peak_rss_mib']} MiB, matching worker "
        f"{result['matching_worker_peak_rss_mib']} MiB"
    )
    print(f"targets               {result['targets']}   -> {path}")


if __name__ == "__main__":
    main()
