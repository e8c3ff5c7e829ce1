"""Matching throughput: the service's parallel path against one raw anonlink call.

All run on the same encodings (generated identities, encoded with the default schema) in the
same process run, alternately, `--runs` times each: one anonlink call, then the service path on
one worker process, then on one per core; the service path includes starting its worker pool
and shipping the encodings to it. Then the peak memory of the service path on one worker per
core, in a fresh process with the native kernel and with the reference path (anonlink and its
bitarrays, as before the kernel): the summed PSS of the process and its workers, sampled every
0.1 s. Prints and writes benchmarks/results/matching.json.

    python benchmarks/matching.py [--records 100000] [--runs 3] [--threshold 0.8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from blindlink.benchmarking.data import encoded_pair
from blindlink.benchmarking.results import summary, timed, write_result
from blindlink.matching import kernel
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
    pools = {"one_worker": LocalPoolExecutor(1), "all_workers": LocalPoolExecutor()}
    raw_times: list[float] = []
    times: dict[str, list[float]] = {name: [] for name in pools}
    for i in range(args.runs):
        seconds, raw = timed(
            lambda: find_candidate_pairs(
                [requester, custodian], dice_coefficient_accelerated, args.threshold
            )
        )
        raw_times.append(seconds)
        expected = np.frombuffer(raw[0], dtype=np.float64)
        line = f"run {i + 1}/{args.runs}: raw anonlink {seconds:.1f} s"
        for name, executor in pools.items():
            seconds, service = timed(
                lambda executor=executor: find_candidates(
                    shared, args.threshold, executor, executor.workers
                )
            )
            times[name].append(seconds)
            same = np.array_equal(expected, service.similarities)
            line += f", {executor.describe()} {seconds:.1f} s (identical: {same})"
            if not same:
                raise SystemExit(f"the service path on a {executor.describe()} differs")
        print(line, flush=True)
    raw_rate = comparisons / summary(raw_times)["median"]
    result: dict[str, object] = {
        "method": (
            f"{args.records} x {args.records} all-pairs Dice at threshold "
            f"{args.threshold}, {bits}-bit encodings of generated identities; "
            "raw = one anonlink find_candidate_pairs call with "
            "dice_coefficient_accelerated in one process; service = blindlink's matching "
            "engine (its Dice kernel: machine.dice_kernel) on a local pool of one worker "
            f"process and of {pools['all_workers'].workers} (pool start-up included); runs "
            "alternate; rates from the median wall time; speedups are ratios to raw "
            "anonlink measured in the same run"
        ),
        "records_per_party": args.records,
        "comparisons": comparisons,
        "candidates": len(expected),
        "raw_seconds": summary(raw_times),
        "raw_comparisons_per_second": raw_rate,
    }
    print(f"raw anonlink  {raw_rate:.3g} comparisons/s (median of {args.runs})")
    for name, executor in pools.items():
        rate = comparisons / summary(times[name])["median"]
        result[name] = {
            "workers": executor.workers,
            "seconds": summary(times[name]),
            "comparisons_per_second": rate,
            "speedup": rate / raw_rate,
        }
        print(
            f"{executor.describe():<26} {rate:.3g} comparisons/s, {rate / raw_rate:.2f}x "
            "raw anonlink"
        )
    result["peak_pss_gib"] = {
        path: peak_pss_gib(workdir, shared, args.threshold, path)
        for path in (kernel.active(), "reference")
    }
    print(f"peak memory (PSS, process and workers): {result['peak_pss_gib']} GiB")
    print(f"Dice kernel: {kernel.active()} ({kernel.describe(kernel.active())})")
    print(f"-> {write_result('matching', result)}")


MEASURED_RUN = """
import sys
import numpy as np
from blindlink.matching.engine import SharedEncodings, find_candidates
from blindlink.matching.executors import LocalPoolExecutor
shared = SharedEncodings.of(np.load(sys.argv[1]), np.load(sys.argv[2]))
pool = LocalPoolExecutor()
find_candidates(shared, float(sys.argv[3]), pool, pool.workers)
"""


def peak_pss_gib(workdir: Path, shared: SharedEncodings, threshold: float, path: str) -> float:
    """Peak summed PSS of a fresh process matching `shared` on one worker per core with the
    kernel path `path` (BLINDLINK_DICE_KERNEL), and of its workers."""
    files = [workdir / "requester.npy", workdir / "custodian.npy"]
    np.save(files[0], shared.requester)
    np.save(files[1], shared.custodian)
    command = [sys.executable, "-c", MEASURED_RUN, *map(str, files), str(threshold)]
    process = subprocess.Popen(command, env={**os.environ, "BLINDLINK_DICE_KERNEL": path})
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_pss_kib(process.pid))
        time.sleep(0.1)
    if process.returncode:
        raise SystemExit(f"the measured run ({path}) failed")
    return peak / 2**20


def _tree_pss_kib(root: int) -> int:
    """The summed PSS of process `root` and its descendants, in KiB (0 for those gone)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        pending += children.get(pid, [])
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next(
            int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")
        )
    return total


if __name__ == "__main__":
    main()
