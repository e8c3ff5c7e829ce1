"""Upload throughput over loopback gRPC with mutual TLS.

A `blindlink serve` process with a development CA; the custodian uploads an encodings file
(generated random encodings of the agreed length) with the blindlink client, `--runs` times,
each to a fresh project. Throughput is payload megabytes (10^6 bytes) per second of the
whole upload call, including the server verifying and committing the file.
Prints and writes benchmarks/results/upload.json.

    python benchmarks/upload.py [--records 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from blindlink.benchmarking.parties import Parties
from blindlink.benchmarking.results import summary, timed, write_result
from blindlink.encoding.encodings_file import write_encodings
from blindlink.encoding.schema import default_schema_path, load_schema
from blindlink.server.local_process import local_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
    schema = load_schema(default_schema_path())
    parties = Parties.create(work)
    rows = np.random.default_rng(0).integers(
        0, 256, (args.records, schema.bit_length // 8), dtype=np.uint8
    )
    encodings = work / "enc.bin"
    write_encodings(encodings, schema.bit_length, schema.sha256, [rows.tobytes()])
    megabytes = rows.nbytes / 1e6
    times = []
    with (
        local_server(work / "server", parties.tls_dir) as server,
        parties.client(server.address, "custodian") as client,
    ):
        for i in range(args.runs):
            agreement = parties.agreement(
                f"upload benchmark {i}", schema, max_records_per_upload=args.records
            )
            project = client.create_project(agreement).project_id
            seconds, _ = timed(lambda p=project: client.upload(p, encodings))
            times.append(seconds)
            print(f"run {i + 1}/{args.runs}: {megabytes / seconds:.0f} MB/s", flush=True)
    rate = megabytes / summary(times)["median"]
    result = {
        "method": (
            f"{args.records} encodings of {schema.bit_length} bits ({megabytes:.0f} MB) "
            "uploaded by the blindlink client to a `blindlink serve` process over "
            "loopback with mutual TLS; wall time of the whole Upload call including the "
            "server's hash check and atomic commit; median of the runs"
        ),
        "records": args.records,
        "megabytes": megabytes,
        "seconds": summary(times),
        "megabytes_per_second": rate,
    }
    path = write_result("upload", result)
    print(f"upload {rate:.0f} MB/s (median of {args.runs})   -> {path}")


if __name__ == "__main__":
    main()
