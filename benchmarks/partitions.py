"""The custodian index partitioned by key value for a Dask cluster: per-partition costs.

Against a generated custodian (`--records`, default 1M; generated and encoded as
benchmarks/standing.py does, default schema and its four keyed blocking keys), builds the
standing index, then each of `--parts` partitions in this process, one after another (the
function a worker runs): seconds, records and bytes on disk per partition. Then, per requester
batch (10 of 1,000 records, 3 of 10,000, cut from one generated batch), per partition, the two
calls a worker serves, timed in this process: the gather (the rows and keys of the partition's
records sharing a key value with the batch) and lookup + compare (the same lookup, the records'
encodings read, and every agreed key's groups compared, as `run_on_partition` does). The first
batch runs with the partitions' files dropped from the page cache (posix_fadvise DONTNEED:
cold), the others warm; figures are medians over the warm batches. Then the same batches end
to end on a LocalCluster of 2 worker processes (1 thread each) serving the partitions: wall
time of gather + match + decide in this process, against the single-machine path (the whole
index read in this process, matched serially) in the same run, decisions checked identical;
and each worker's resident memory (anonymous and file-backed pages) after serving. Prints and
writes benchmarks/results/partitions.json.

    python benchmarks/partitions.py [--records 1000000] [--parts 4] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from standing import BLOCKING, Batch, prepare

from blindlink.agreement.model import default_rule
from blindlink.benchmarking.results import write_result
from blindlink.encoding.encodings_file import read_records
from blindlink.index.build import build_index
from blindlink.index.custodian import CustodianIndex
from blindlink.index.partitions import (
    PartitionedIndex,
    Placement,
    build_partition,
    gather_on_partition,
    run_on_partition,
)
from blindlink.matching.blocking import split_records
from blindlink.matching.decision import Decisions, link
from blindlink.matching.engine import BandTask, compare_bands
from blindlink.matching.executors import SerialExecutor
from blindlink.matching.match_model import RANKED

RULE = default_rule([])  # what `agreement new` agrees for unhardened encodings
SIZES = {1_000: 10, 10_000: 3}
WORKERS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="custodian records")
    parser.add_argument("--parts", type=int, default=4, help="partitions")
    parser.add_argument("--workdir", type=Path, help="keep generated and encoded data here")
    parser.add_argument("--out", type=Path, help="results directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args, args.workdir or Path(tmp), Path(tmp))


def disk_bytes(directory: Path) -> int:
    """Bytes allocated on disk to the files in `directory` (recursively)."""
    return sum(p.stat().st_blocks * 512 for p in directory.rglob("*") if p.is_file())


def drop_from_page_cache(directory: Path) -> None:
    for path in directory.rglob("*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run(args: argparse.Namespace, workdir: Path, scratch: Path) -> None:
    load_before = os.getloadavg()
    custodian = prepare(workdir, args.records, SIZES)
    index_dir = scratch / "index"
    clock = time.perf_counter()
    build_index(custodian.path, "benchmark", len(BLOCKING.keys), index_dir)
    whole_build = time.perf_counter() - clock
    index = CustodianIndex(index_dir)
    whole_bytes = disk_bytes(index_dir)
    print(
        f"index of {args.records:,} records: built in {whole_build:.1f} s, "
        f"{whole_bytes / 2**20:.0f} MiB on disk",
        flush=True,
    )
    parts_dir = scratch / "parts"
    parts_dir.mkdir()
    partitions = []
    for part in range(args.parts):
        seconds = build_partition(index_dir, part, args.parts, parts_dir / str(part))
        records = CustodianIndex(parts_dir / str(part)).manifest.records
        partitions.append(
            {
                "build_s": seconds,
                "records": records,
                "disk_bytes": disk_bytes(parts_dir / str(part)),
            }
        )
        print(f"  partition {part}: {records:,} records in {seconds:.2f} s", flush=True)
    placement = Placement("", parts_dir, args.parts, ("",))
    serving = serve_in_process(placement, custodian.batches, parts_dir)
    cluster = serve_on_cluster(index, args.parts, custodian.batches)
    replication = sum(p["records"] for p in partitions) / args.records
    result = {
        "method": (
            "generated custodian and batches as benchmarks/standing.py (seed 1, default schema "
            "with four keyed blocking keys); the rule `agreement new` agrees for unhardened "
            "encodings (calibrated towards the best estimated F*); "
            "partition builds and per-partition serving timed in one process, one call at a "
            "time (what a worker runs); first batch cold (partition files dropped from the "
            "page cache with posix_fadvise), per-size figures medians over the other batches; "
            "end to end on a dask.distributed LocalCluster of 2 processes x 1 thread, "
            "latency = gather + match + decide seen by the caller, against the whole index "
            "matched serially in the same process, same run"
        ),
        "records": args.records,
        "parts": args.parts,
        "whole_index": {"build_s": whole_build, "disk_bytes": whole_bytes},
        "partitions": partitions,
        "replication": replication,
        "serving_per_partition": serving,
        "cluster": cluster,
        # Other work shares this machine: its load (1, 5, 15 min) before and after.
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }
    path = write_result("partitions", result, args.out)
    print(
        f"{args.parts} partitions: {replication:.2f} copies of each record on average, "
        f"{sum(p['disk_bytes'] for p in partitions) / 2**20:.0f} MiB on disk in all "
        f"(the whole index {whole_bytes / 2**20:.0f} MiB)"
    )
    for size, found in serving.items():
        print(
            f"batch of {size:,}, per partition (median over partitions of the warm medians): "
            f"{found['candidate_rows_median']:,.0f} candidate rows, gather "
            f"{found['gather_s_median'] * 1e3:.1f} ms, lookup + compare "
            f"{found['lookup_compare_s_median'] * 1e3:.1f} ms (slowest partition "
            f"{found['lookup_compare_s_max'] * 1e3:.1f} ms)"
        )
    for size, found in cluster["batches"].items():
        print(
            f"batch of {size:,} end to end: on {args.parts} partitions of 2 workers p50 "
            f"{found['partitioned_p50_s']:.3f} s, whole index in one process p50 "
            f"{found['single_p50_s']:.3f} s; identical decisions: {found['identical']}; "
            f"phases (p50): {found['partitioned_phases_p50_s']}"
        )
    print(f"worker memory after serving (MiB): {cluster['worker_memory_mib']}")
    print(f"-> {path}")


def serve_in_process(
    placement: Placement, batches: dict[int, list[Batch]], parts_dir: Path
) -> dict[int, dict[str, Any]]:
    """Per batch size and partition, the worker's two calls timed in this process."""
    tasks = [
        BandTask(RULE.candidate_threshold, key_column=k, best=RANKED)
        for k in range(len(BLOCKING.keys))
    ]
    found: dict[int, dict[str, Any]] = {}
    first = True
    for size, group in batches.items():
        # (batch, partition) -> (gather s, lookup + compare s, candidate rows, comparisons)
        runs: list[list[tuple[float, float, int, int]]] = []
        for number, batch in enumerate(group):
            if first:
                drop_from_page_cache(parts_dir)
            requester, keys = _records(batch)
            per_part = []
            for part, rows, share in placement.shares(keys):
                where = (part, placement.parts, f"{size}-{number}")
                clock = time.perf_counter()
                gathered = gather_on_partition(placement.path(part), share)[0]
                gather = time.perf_counter() - clock
                clock = time.perf_counter()
                results = run_on_partition(
                    compare_bands, tasks, placement.path(part), where, requester[rows], share
                )
                compare = time.perf_counter() - clock
                comparisons = sum(r.comparisons for r in results)
                per_part.append((gather, compare, len(gathered), comparisons))
            if first:
                cold = per_part
                first = False
            else:
                runs.append(per_part)
        medians = [
            [statistics.median(run[p][i] for run in runs) for i in range(4)]
            for p in range(len(runs[0]))
        ]
        found[size] = {
            "batches": len(group),
            "warm_per_partition": [
                dict(
                    zip(
                        ("gather_s", "lookup_compare_s", "candidate_rows", "comparisons"),
                        m,
                        strict=True,
                    )
                )
                for m in medians
            ],
            "candidate_rows_median": statistics.median(m[2] for m in medians),
            "comparisons_median": statistics.median(m[3] for m in medians),
            "gather_s_median": statistics.median(m[0] for m in medians),
            "lookup_compare_s_median": statistics.median(m[1] for m in medians),
            "lookup_compare_s_max": max(m[1] for m in medians),
        }
        if size == next(iter(batches)):
            found[size]["cold_first_batch_per_partition"] = [
                dict(
                    zip(
                        ("gather_s", "lookup_compare_s", "candidate_rows", "comparisons"),
                        c,
                        strict=True,
                    )
                )
                for c in cold
            ]
    return found


def serve_on_cluster(
    index: CustodianIndex, parts: int, batches: dict[int, list[Batch]]
) -> dict[str, Any]:
    """The batches end to end on a LocalCluster's partitions and on the whole index here."""
    from dask.distributed import Client, LocalCluster

    measured: dict[int, dict[str, Any]] = {}
    with LocalCluster(
        n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        partitioned = PartitionedIndex(index, cluster.scheduler_address, parts)
        clock = time.perf_counter()
        partitioned.prepare()
        build = time.perf_counter() - clock
        candidates_found: list[float] = []  # when each run's candidates were found
        for size, group in batches.items():
            on_cluster, single, same = [], [], True
            candidate_rows: list[int] = []
            phases: list[tuple[float, float, float]] = []
            for batch in group:
                requester, keys = _records(batch)
                clock = time.perf_counter()
                indexed = partitioned.batch(requester, keys)
                gathered = time.perf_counter()
                assert indexed.executor is not None
                found = indexed.in_custodian_rows(
                    link(
                        indexed.shared,
                        RULE,
                        indexed.executor,
                        1,
                        BLOCKING,
                        deciding=lambda: candidates_found.append(time.perf_counter()),
                    )
                )
                decided, compared = time.perf_counter(), candidates_found[-1]
                on_cluster.append(decided - clock)
                phases.append((gathered - clock, compared - gathered, decided - compared))
                clock = time.perf_counter()
                local = index.batch(requester, keys)
                expected = local.in_custodian_rows(
                    link(local.shared, RULE, SerialExecutor(), 1, BLOCKING)
                )
                single.append(time.perf_counter() - clock)
                same = same and _identical(found, expected)
                candidate_rows.append(len(local.custodian_rows))
            measured[size] = {
                "partitioned_s": on_cluster,
                "single_s": single,
                "partitioned_p50_s": statistics.median(on_cluster),
                # gather (rows and keys from the partitions, merged here), candidates (key
                # groups compared on the partitions, merged here), decide (here)
                "partitioned_phases_p50_s": {
                    name: statistics.median(p[i] for p in phases)
                    for i, name in enumerate(("gather", "candidates", "decide"))
                },
                "candidate_rows": candidate_rows,
                "single_p50_s": statistics.median(single),
                "identical": same,
            }
        with Client(cluster.scheduler_address) as client:
            memory = client.run(_memory_mib)
    return {
        "workers": WORKERS,
        "partition_build_on_workers_s": build,
        "batches": measured,
        "worker_memory_mib": list(memory.values()),
    }


def _records(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    return split_records(read_records(batch.path), len(BLOCKING.keys))


def _identical(found: Decisions, expected: Decisions) -> bool:
    return found.summary() == expected.summary() and all(
        np.array_equal(getattr(found, name), getattr(expected, name))
        for name in ("requester_rows", "custodian_rows", "similarities", "status")
    )


def _memory_mib() -> dict[str, float]:
    """This process's resident memory: all, anonymous, file-backed (mapped index pages)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


if __name__ == "__main__":
    main()
