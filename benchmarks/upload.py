"""Upload throughput over loopback gRPC with mutual TLS, memory, and continuing a cut upload.

A `blindlink serve` process with a development CA; the custodian uploads an encodings file
(generated random encodings of the agreed length, written in chunks) with the blindlink client,
`--runs` times, each to a fresh project. Throughput is payload megabytes (10^6 bytes) per second
of the whole upload call, including the server verifying and committing the file. Then one
upload is cut halfway (the client's stream breaks off) and run again: the second call continues
from the bytes the server kept. Peak resident memory of the client (this process) and of the
server process are recorded. Prints and writes benchmarks/results/upload.json.

    python benchmarks/upload.py [--records 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import numpy as np

from blindlink.benchmarking.parties import Parties
from blindlink.benchmarking.results import peak_rss_gib, summary, timed, write_result
from blindlink.client.linkage_client import LinkageClient, ServerError
from blindlink.encoding.encodings_file import read_header, write_encodings
from blindlink.encoding.schema import default_schema_path, load_schema
from blindlink.server.local_process import local_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(tmp))


CHUNK_RECORDS = 100_000


class Cut(Exception):
    """Breaks an upload's stream off."""


def run(args: argparse.Namespace, work: Path) -> None:
    schema = load_schema(default_schema_path())
    parties = Parties.create(work)
    encodings = work / "enc.bin"
    record_bytes = schema.bit_length // 8
    rng = np.random.default_rng(0)
    chunks = (
        rng.integers(
            0, 256, (min(CHUNK_RECORDS, args.records - start), record_bytes), np.uint8
        ).tobytes()
        for start in range(0, args.records, CHUNK_RECORDS)
    )
    write_encodings(encodings, schema.bit_length, schema.sha256, chunks)
    megabytes = args.records * record_bytes / 1e6
    times = []
    with (
        local_server(work / "server", parties.tls_dir) as server,
        parties.client(server.address, "custodian") as client,
    ):

        def project(name: str) -> str:
            agreement = parties.agreement(name, schema, max_records_per_upload=args.records)
            return client.create_project(agreement).project_id

        for i in range(args.runs):
            target = project(f"upload benchmark {i}")
            seconds, _ = timed(lambda p=target: client.upload(p, encodings))
            times.append(seconds)
            print(f"run {i + 1}/{args.runs}: {megabytes / seconds:.0f} MB/s", flush=True)
        cut = cut_and_continue(client, project("upload benchmark, cut"), encodings, megabytes)
        server_peak = _peak_rss_gib(server.process.pid)
    rate = megabytes / summary(times)["median"]
    result = {
        "method": (
            f"{args.records} encodings of {schema.bit_length} bits ({megabytes:.0f} MB) "
            "uploaded by the blindlink client to a `blindlink serve` process over "
            "loopback with mutual TLS; wall time of the whole Upload call including the "
            "server's hash check and atomic commit; median of the runs. Cut: the client's "
            "stream is broken off after half the bytes, then the same upload is called again "
            "and continues from the bytes the server kept. Peak memory: VmHWM of the server "
            "process, ru_maxrss of the client process (which wrote the file in chunks)"
        ),
        "records": args.records,
        "megabytes": megabytes,
        "seconds": summary(times),
        "megabytes_per_second": rate,
        "cut_and_continued": cut,
        "peak_rss_gib": {"server": server_peak, "client": peak_rss_gib()},
    }
    path = write_result("upload", result)
    print(
        f"upload {rate:.0f} MB/s (median of {args.runs}); cut at half, continued from byte "
        f"{cut['kept_bytes']} in {cut['continue_seconds']:.2f} s; peak memory server "
        f"{server_peak:.2f} GiB, client {peak_rss_gib():.2f} GiB   -> {path}"
    )


def cut_and_continue(
    client: LinkageClient, project: str, encodings: Path, megabytes: float
) -> dict[str, float]:
    """Break an upload off after half its bytes, then upload again: what the server kept and
    how long the continuation took."""
    sent = 0

    def cut_at_half(count: int) -> None:
        nonlocal sent
        sent += count
        if sent >= megabytes * 1e6 / 2:
            raise Cut

    with contextlib.suppress(Cut, ServerError):
        client.upload(project, encodings, progress=cut_at_half)
    kept = client.upload_offset(project, read_header(encodings).content_sha256)
    seconds, _ = timed(lambda: client.upload(project, encodings))
    return {"kept_bytes": kept, "continue_seconds": seconds}


def _peak_rss_gib(pid: int) -> float:
    """A live process's peak resident memory (VmHWM), in GiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"no VmHWM for process {pid}")


if __name__ == "__main__":
    main()
