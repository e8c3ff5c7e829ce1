"""Matching throughput: the service's parallel path against one raw anonlink call.

Both run on the same encodings (generated identities, encoded with the default schema) in the
same process run, alternately, `--runs` times each; the service path includes starting its
worker pool and shipping the encodings to it. Prints and writes benchmarks/results/matching.json.

    python benchmarks/matching.py [--records 100000] [--runs 3] [--threshold 0.8]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np

from blindlink.benchmarking.data import encoded_pair
from blindlink.benchmarking.results import summary, timed, write_result
from blindlink.matching.engine import SharedEncodings, find_candidates
from blindlink.matching.executors import LocalPoolExecutor
from blindlink.matching.linkage import to_bitarrays

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
    from anonlink.candidate_generation import find_candidate_pairs
    from anonlink.similarities import dice_coefficient_accelerated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="records per party")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--workdir", type=Path, help="keep generated data here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args, args.workdir or Path(tmp))


def run(args: argparse.Namespace, workdir: Path) -> None:
    data = encoded_pair(workdir, args.records)
    comparisons = len(data.requester) * len(data.custodian)
    bits = data.requester.shape[1] * 8
    requester = to_bitarrays(data.requester.tobytes(), bits)
    custodian = to_bitarrays(data.custodian.tobytes(), bits)
    shared = SharedEncodings.of(data.requester, data.custodian)
    executor = LocalPoolExecutor()
    raw_times, service_times = [], []
    for i in range(args.runs):
        seconds, raw = timed(
            lambda: find_candidate_pairs(
                [requester, custodian], dice_coefficient_accelerated, args.threshold
            )
        )
        raw_times.append(seconds)
        seconds, service = timed(
            lambda: find_candidates(shared, args.threshold, executor, executor.workers)
        )
        service_times.append(seconds)
        same = np.array_equal(np.frombuffer(raw[0], dtype=np.float64), service.similarities)
        print(
            f"run {i + 1}/{args.runs}: raw anonlink {raw_times[-1]:.1f} s, service "
            f"{service_times[-1]:.1f} s, identical candidates: {same}",
            flush=True,
        )
        if not same:
            raise SystemExit("the service path found different candidates")
    raw_rate = comparisons / summary(raw_times)["median"]
    service_rate = comparisons / summary(service_times)["median"]
    result = {
        "method": (
            f"{args.records} x {args.records} all-pairs Dice at threshold "
            f"{args.threshold}, {bits}-bit encodings of generated identities; "
            "raw = one anonlink find_candidate_pairs call with "
            "dice_coefficient_accelerated in one process; service = blindlink's matching "
            f"engine on a {executor.describe()} (pool start-up included); runs "
            "alternate; rates from the median wall time"
        ),
        "records_per_party": args.records,
        "comparisons": comparisons,
        "candidates": len(service.similarities),
        "raw_seconds": summary(raw_times),
        "service_seconds": summary(service_times),
        "raw_comparisons_per_second": raw_rate,
        "service_comparisons_per_second": service_rate,
        "speedup": service_rate / raw_rate,
        "workers": executor.workers,
    }
    path = write_result("matching", result)
    print(f"raw anonlink  {raw_rate:.3g} comparisons/s (median of {args.runs})")
    print(f"service path  {service_rate:.3g} comparisons/s on {executor.workers} workers")
    print(f"speedup       {result['speedup']:.2f}x   -> {path}")


if __name__ == "__main__":
    main()
