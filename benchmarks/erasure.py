"""What erasing the removed rows adds to a custodian update that removes rows.

A `blindlink serve` process with a development CA; the custodian uploads --records random
1024-bit encodings, each with two blocking keys, to a project that blocks on keys. Then, --runs
times in turn: an update removing 1,000 rows spread over the file (the server checks the file
against its recorded hash while computing the hash it will have once erased, builds the next
index version, commits, overwrites the 1,000 records with zeros and writes the audit entry),
and an update appending one record (the same index version build and commit, nothing to
erase). Wall time of each Update call, median of the runs. Anchor, in the same run: one SHA-256
pass over the custodian's encodings file in this process (what the added check costs at
least). Prints and writes benchmarks/results/erasure.json.

    python benchmarks/erasure.py [--records 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

import numpy as np

from blindlink.agreement.signing import parse_signed
from blindlink.benchmarking.parties import Parties
from blindlink.benchmarking.results import summary, timed, write_result
from blindlink.encoding.encodings_file import iter_payload_chunks, write_encodings
from blindlink.encoding.schema import default_schema_path, load_schema
from blindlink.server.local_process import local_server

KEYS = [[{"field": "surname"}], [{"field": "postcode"}]]
CHUNK_RECORDS = 100_000
REMOVED = 1_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(tmp))


def records_file(path: Path, records: int, encodings_id: str, seed: int) -> Path:
    """`records` random encodings of 128 bytes, each followed by two blocking keys."""
    rng = np.random.default_rng(seed)

    def chunk(count: int) -> bytes:
        encodings = rng.integers(0, 256, (count, 128), np.uint8)
        keys = rng.integers(1, max(records // 5, 2), (count, len(KEYS))).astype("<u8")
        return np.hstack([encodings, keys.view(np.uint8)]).tobytes()

    chunks = (
        chunk(min(CHUNK_RECORDS, records - start)) for start in range(0, records, CHUNK_RECORDS)
    )
    write_encodings(path, (128 + 8 * len(KEYS)) * 8, encodings_id, chunks)
    return path


def sha256_pass(path: Path) -> float:
    def digest() -> bytes:
        hashed = hashlib.sha256()
        for chunk in iter_payload_chunks(path, 1 << 20):
            hashed.update(chunk)
        return hashed.digest()

    return timed(digest)[0]


def run(args: argparse.Namespace, work: Path) -> None:
    schema = load_schema(default_schema_path())
    parties = Parties.create(work)
    terms = parties.agreement(
        "erasure benchmark",
        schema,
        blocking={"method": "keys", "keys": KEYS},
        max_records_per_upload=args.records,
    )
    encodings_id = parse_signed(terms).agreement.encodings_id
    source = records_file(work / "custodian.bin", args.records, encodings_id, 0)
    one = records_file(work / "one.bin", 1, encodings_id, 1)
    removing, appending, anchor = [], [], []
    with (
        local_server(work / "server", parties.tls_dir) as server,
        parties.client(server.address, "custodian") as custodian,
        parties.client(server.address, "requester") as requester,
    ):
        project = requester.create_project(terms).project_id
        custodian.upload(project, source)
        rows = args.records
        step = args.records // REMOVED
        for i in range(args.runs):
            remove = range(i, args.records, step)[:REMOVED]
            seconds, _ = timed(lambda r=rows, g=remove: custodian.update(project, r, remove=g))
            removing.append(seconds)
            seconds, _ = timed(lambda r=rows: custodian.update(project, r, one))
            appending.append(seconds)
            rows += 1
            anchor.append(sha256_pass(source))
            print(
                f"run {i + 1}/{args.runs}: removing {REMOVED:,} rows {removing[-1]:.2f} s, "
                f"appending 1 record {appending[-1]:.2f} s, SHA-256 pass {anchor[-1]:.2f} s",
                flush=True,
            )
    medians = {name: summary(times)["median"] for name, times in
               (("remove", removing), ("append", appending), ("sha256", anchor))}  # fmt: skip
    result = {
        "method": (
            f"{args.records} random 1024-bit encodings with {len(KEYS)} blocking keys each "
            f"({source.stat().st_size / 1e6:.0f} MB) uploaded by the custodian to a "
            "`blindlink serve` process over loopback with mutual TLS; then, per run, the wall "
            f"time of an Update call removing {REMOVED:,} rows spread over the file (with their "
            "erasure) and of one appending a single record (no erasure), median of the runs; "
            "anchor: one SHA-256 pass over the same file in the benchmark's process"
        ),
        "records": args.records,
        "remove_1000_s": summary(removing),
        "append_1_s": summary(appending),
        "sha256_pass_s": summary(anchor),
        "remove_over_append": medians["remove"] / medians["append"],
        "remove_minus_append_over_sha256_pass": (medians["remove"] - medians["append"])
        / medians["sha256"],
    }
    path = write_result("erasure", result)
    print(
        f"update removing {REMOVED:,} rows (erased) {medians['remove']:.2f} s, appending one "
        f"record {medians['append']:.2f} s ({result['remove_over_append']:.2f}x); the "
        f"difference is {result['remove_minus_append_over_sha256_pass']:.2f} SHA-256 passes "
        f"over the custodian's file ({medians['sha256']:.2f} s each; median of {args.runs})"
        f"   -> {path}"
    )


if __name__ == "__main__":
    main()
