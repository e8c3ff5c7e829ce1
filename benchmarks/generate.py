"""Generator scale: wall time and peak memory of `blindlink generate` by custodian size.

Each size runs `blindlink generate --batches K --batch-records N` as a separate process (a
custodian of that many records and K requester batches drawn from it); wall time is measured
around the process and peak resident memory is the process's own (os.wait4). Memory bounded by
the chunk, not the record count, shows as a peak that does not grow from one size to the next.
Prints and writes benchmarks/results/generate.json.

    python benchmarks/generate.py [--records 100000 1000000 2000000] [--batches 10]
        [--batch-records 10000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from blindlink.benchmarking.results import write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[100_000, 1_000_000, 2_000_000])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-records", type=int, default=10_000)
    args = parser.parse_args()
    runs = []
    for records in args.records:
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(measure(records, args.batches, args.batch_records, Path(tmp)))
        run = runs[-1]
        print(
            f"custodian {records:>11,}: {run['seconds']:7.1f} s, "
            f"{run['custodian_records_per_second']:>9,.0f} custodian records/s, "
            f"peak RSS {run['peak_rss_mib']:6.0f} MiB, "
            f"custodian.csv {run['custodian_mib']:,.0f} MiB",
            flush=True,
        )
    smallest, largest = runs[0], runs[-1]
    result = {
        "method": (
            "`blindlink generate --records R --batches K --batch-records N --seed 1` (default "
            "corruption, overlap 0.5) as a separate process per size, one run each; seconds = "
            "wall time of the process; peak_rss_mib = its own maximum resident set (os.wait4); "
            "records_per_second counts the custodian's records only"
        ),
        "batches": args.batches,
        "batch_records": args.batch_records,
        "runs": runs,
        "peak_rss_ratio_largest_to_smallest": largest["peak_rss_mib"] / smallest["peak_rss_mib"],
        "records_ratio_largest_to_smallest": largest["records"] / smallest["records"],
    }
    path = write_result("generate", result)
    print(
        f"{result['records_ratio_largest_to_smallest']:.0f}x the records: peak RSS "
        f"{result['peak_rss_ratio_largest_to_smallest']:.2f}x   -> {path}"
    )


def measure(records: int, batches: int, batch_records: int, work: Path) -> dict[str, Any]:
    """Run one `blindlink generate` and return its wall time, peak memory and output size."""
    command = [
        sys.executable,
        "-m",
        "blindlink",
        "generate",
        "--records",
        str(records),
        "--batches",
        str(batches),
        "--batch-records",
        str(batch_records),
        "--seed",
        "1",
        "--out",
        str(work),
    ]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, command)
    return {
        "records": records,
        "seconds": seconds,
        "custodian_records_per_second": records / seconds,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
        "custodian_mib": (work / "custodian.csv").stat().st_size / 2**20,
    }


if __name__ == "__main__":
    main()
