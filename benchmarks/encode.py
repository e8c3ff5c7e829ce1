"""Encoding throughput: `blindlink encode` against clkhash's own generate_clk_from_csv.

All on the same generated CSV in the same run: the blindlink command as a user runs it (a
separate process: validation, encoding on every core, shuffled encodings file, ID map), and
clkhash's generate_clk_from_csv in one process (max_workers=1) and on every core (its default).
Prints and writes benchmarks/results/encode.json.

    python benchmarks/encode.py [--records 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
from pathlib import Path

from clkhash import clk
from clkhash.schema import from_json_dict

from blindlink.benchmarking.data import BENCHMARK_SECRET
from blindlink.benchmarking.results import summary, timed, write_result
from blindlink.encoding.schema import default_schema_path, load_schema
from blindlink.synthetic import generate_datasets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
    files = generate_datasets(work / "data", args.records, 0.5, seed=3)
    clkhash_schema = from_json_dict(copy.deepcopy(load_schema(default_schema_path()).document))
    secret_file = work / "secret"
    secret_file.write_bytes(BENCHMARK_SECRET)
    command = [
        sys.executable,
        "-m",
        "blindlink",
        "encode",
        str(files.requester),
        "--secret-file",
        str(secret_file),
        "--out",
        str(work / "enc.bin"),
        "--id-map",
        str(work / "ids.json"),
    ]

    def clkhash_encode(workers: int | None) -> None:
        with open(files.requester, encoding="utf-8") as f:
            clk.generate_clk_from_csv(
                f, BENCHMARK_SECRET, clkhash_schema, progress_bar=False, max_workers=workers
            )

    times: dict[str, list[float]] = {"blindlink": [], "clkhash_1": [], "clkhash_all": []}
    for i in range(args.runs):
        for path in (work / "enc.bin", work / "ids.json"):
            path.unlink(missing_ok=True)
        times["blindlink"].append(timed(lambda: subprocess.run(command, check=True))[0])
        times["clkhash_1"].append(timed(lambda: clkhash_encode(1))[0])
        times["clkhash_all"].append(timed(lambda: clkhash_encode(None))[0])
        print(
            f"run {i + 1}/{args.runs}: "
            + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()),
            flush=True,
        )
    rates = {k: args.records / summary(v)["median"] for k, v in times.items()}
    result = {
        "method": (
            f"{args.records} generated records, default schema (1024 bits); blindlink = "
            "`blindlink encode` as a subprocess (start-up, validation, encoding on every "
            "core, writing files); clkhash_1 = generate_clk_from_csv(max_workers=1); "
            "clkhash_all = generate_clk_from_csv with its default workers; runs "
            "alternate; rates from median wall times"
        ),
        "records": args.records,
        "seconds": {k: summary(v) for k, v in times.items()},
        "records_per_second": rates,
        "ratio_to_clkhash_single_process": rates["blindlink"] / rates["clkhash_1"],
        "ratio_to_clkhash_all_cores": rates["blindlink"] / rates["clkhash_all"],
    }
    path = write_result("encode", result)
    for name, rate in rates.items():
        print(f"{name:12s} {rate:,.0f} records/s")
    print(
        f"blindlink / clkhash single process: {result['ratio_to_clkhash_single_process']:.2f}x"
        f"   -> {path}"
    )


if __name__ == "__main__":
    main()
