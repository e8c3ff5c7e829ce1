"""The custodian index partitioned by key value across a Dask cluster's workers, so that a
batch is looked up and compared where its postings live, and decided once, in the server.

Key values are uniform 64-bit hashes, so partition p of P holds the values v with
floor((v >> 32) * P / 2**32) == p, of every agreed key: a contiguous range of each key's sorted
values. Each partition is an index in layout.py's format over the custodian records its
postings point to (a record is in the partition of each of its key values, so in up to one
partition per key), plus `members.npy`, each of its records' row in the whole index:

    <index>/partitions/<P>/<p>/   partition p of P, built by the worker that serves it

Every key group lives whole in one partition, so the custodian records gathered from the
partitions holding a batch's key values are exactly those the whole index gives (every group
whole, the key-frequency counts of the match evidence unchanged), and each partition compares
exactly its groups: the candidates, merged in the server, and the decisions made there through
the one decision pipeline are those of the single-machine path.

Workers read partitions by path: the index directory must be on a filesystem every worker
reads at the same path (a LocalCluster's workers share this machine's disk). What travels is
the batch's records that have a key value in a partition (to that partition's worker) and,
back, the custodian rows and keys of its groups and the candidate pairs found; never the
custodian's encodings.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from blindlink.errors import BlindlinkError
from blindlink.index.build import new_array, write_atomically
from blindlink.index.custodian import CustodianIndex, IndexedBatch, batch_key
from blindlink.index.layout import ENCODINGS, KEYS, MANIFEST, Manifest, postings_file
from blindlink.matching.engine import SharedEncodings, TaskResult
from blindlink.matching.executors import TaskFunction

PARTITIONS_DIR = "partitions"
MEMBERS = "members.npy"
COPY_RECORDS = 1 << 16  # encodings copied into a partition at a time
CLIENT_TIMEOUT = "30s"

log = logging.getLogger("blindlink.index")


def partition_of(values: np.ndarray, parts: int) -> np.ndarray:
    """The partition (of `parts`) holding each key value."""
    return ((values.astype(np.uint64) >> np.uint64(32)).astype(np.int64) * parts) >> 32


def _first_value(part: int, parts: int) -> np.uint64:
    """The smallest key value in partition `part` (2**64 - 1 past the last partition)."""
    if part >= parts:
        return np.uint64(2**64 - 1)
    return np.uint64(-(-(part << 32) // parts) << 32)


def in_partition(keys: np.ndarray, part: int, parts: int) -> np.ndarray:
    """`keys` (records, keys) with 0 (no key) for every value outside partition `part`."""
    return np.where((keys != 0) & (partition_of(keys, parts) == part), keys, np.uint64(0))


def build_partition(index_dir: Path, part: int, parts: int, destination: Path) -> float:
    """Write partition `part` of `parts` of the index in `index_dir` at `destination`
    atomically (build.write_atomically); the seconds it took."""
    started = time.monotonic()
    index = CustodianIndex(index_dir)
    write_atomically(destination, lambda directory: _write(index, part, parts, directory))
    return time.monotonic() - started


def _write(index: CustodianIndex, part: int, parts: int, directory: Path) -> Manifest:
    slices = []
    for postings in index.postings:
        bounds = (_first_value(part, parts), _first_value(part + 1, parts))
        low, high = np.searchsorted(postings.values, np.array(bounds, dtype=np.uint64))
        if part == parts - 1:
            high = len(postings.values)  # 2**64 - 1 itself is a value of the last partition
        offsets = np.asarray(postings.offsets[low : high + 1])
        rows = np.asarray(postings.rows[offsets[0] : offsets[-1]])
        slices.append((np.asarray(postings.values[low:high]), offsets - offsets[0], rows))
    members = _distinct_sorted(np.concatenate([np.empty(0, np.int64), *(s[2] for s in slices)]))
    manifest = index.manifest
    encodings = new_array(directory / ENCODINGS, np.uint8, (len(members), manifest.encoding_bytes))
    keys = new_array(directory / KEYS, np.uint64, (len(members), manifest.key_count))
    for start in range(0, len(members), COPY_RECORDS):
        chunk = members[start : start + COPY_RECORDS]
        encodings[start : start + len(chunk)] = index.encodings[chunk]
        keys[start : start + len(chunk)] = index.keys[chunk]
    encodings.flush()
    keys.flush()
    new_array(directory / MEMBERS, np.int64, members.shape)[:] = members
    for key, (values, offsets, rows) in enumerate(slices):
        # Global rows increase within a value, and so do their positions among the members.
        local = np.searchsorted(members, rows).astype(np.int64)
        for name, array in (("values", values), ("offsets", offsets), ("rows", local)):
            new_array(directory / postings_file(key, name), array.dtype, array.shape)[:] = array
    return replace(manifest, records=len(members))


def _distinct_sorted(rows: np.ndarray) -> np.ndarray:
    rows = np.sort(rows)
    return rows[np.r_[True, rows[1:] != rows[:-1]]] if len(rows) else rows


@dataclass(frozen=True)
class Partition:
    """A partition opened on a worker: its index and its records' rows in the whole index."""

    index: CustodianIndex
    members: np.ndarray

    def batch(
        self, requester: np.ndarray, requester_keys: np.ndarray, part: int, parts: int, key: str
    ) -> tuple[SharedEncodings, np.ndarray]:
        """The batch's records (`requester_keys` with only this partition's values) against
        the partition's records sharing one of them, with only this partition's values as
        their keys, so that each agreed key's task compares exactly the partition's groups;
        and those records' rows in the whole index."""
        local = self.index.candidate_rows(requester_keys)
        shared = SharedEncodings(
            requester,
            np.ascontiguousarray(self.index.encodings[local]),
            requester_keys,
            in_partition(np.asarray(self.index.keys[local]), part, parts),
            f"{key}:{self.index.directory}",  # the partition's own forms, in worker caches
        )
        return shared, np.asarray(self.members[local])


# Partitions a worker keeps open (each maps its files), the most recently used first to stay.
OPEN_PARTITIONS = 64
_opened: dict[str, tuple[int, Partition]] = {}


def _partition(directory: str) -> Partition:
    """The partition in `directory`, opened once per worker process while its manifest is the
    same file (a partition rebuilt at the same path is opened again)."""
    path = Path(directory)
    built = (path / MANIFEST).stat().st_ino
    found = _opened.pop(directory, None)
    if found is None or found[0] != built:
        found = built, Partition(CustodianIndex(path), np.load(path / MEMBERS, mmap_mode="r"))
    _opened[directory] = found
    while len(_opened) > OPEN_PARTITIONS:
        del _opened[next(iter(_opened))]
    return found[1]


def gather_on_partition(directory: str, requester_keys: np.ndarray) -> tuple[np.ndarray, ...]:
    """On a worker: the rows in the whole index (increasing) and the keys of the partition's
    records sharing a value with `requester_keys`, and per requester record and key the
    partition's records with its value (every record with it: a value's group is whole in its
    partition)."""
    partition = _partition(directory)
    local, counts = partition.index.look_up(requester_keys)
    return np.asarray(partition.members[local]), np.asarray(partition.index.keys[local]), counts


def run_on_partition(
    fn: TaskFunction,
    tasks: Sequence[Any],
    directory: str,
    where: tuple[int, int, str],
    requester: np.ndarray,
    requester_keys: np.ndarray,
) -> list[TaskResult]:
    """On a worker: fn(task, the batch against partition `where` (part, parts, batch key)) for
    every task, with the custodian rows of the whole index."""
    part, parts, key = where
    shared, members = _partition(directory).batch(requester, requester_keys, part, parts, key)
    return [
        replace(result, custodian_rows=members[result.custodian_rows])
        for result in (fn(task, shared) for task in tasks)
    ]


@dataclass(frozen=True)
class Placement:
    """A partitioned index on a cluster: partition p is in `directory`/p, served by the
    worker `workers[p % len(workers)]` (another takes over if it leaves)."""

    address: str
    directory: Path
    parts: int
    workers: tuple[str, ...]

    def path(self, part: int) -> str:
        return str(self.directory / str(part))

    def worker(self, part: int) -> str:
        return self.workers[part % len(self.workers)]

    def shares(self, requester_keys: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Per partition holding any of the batch's key values: the partition, the batch's
        rows with a value in it, and those rows' keys with only its values."""
        for part in range(self.parts):
            keys = in_partition(requester_keys, part, self.parts)
            rows = np.flatnonzero(keys.any(axis=1))
            if len(rows):
                yield part, rows, keys[rows]

    def submit(self, client: Any, fn: Any, part: int, *args: Any) -> Any:
        return client.submit(
            fn,
            *args,
            workers=[self.worker(part)],
            allow_other_workers=True,
            pure=False,
        )


def _complete_count(root: Path) -> int:
    """The partition count of a complete set of partitions in `root`, 0 if none: a set
    outlives changes in the number of workers, which only move partitions between them."""
    for path in root.iterdir() if root.exists() else ():
        if path.name.isdigit() and all(
            (path / str(p) / MANIFEST).exists() for p in range(int(path.name))
        ):
            return int(path.name)
    return 0


def _client(address: str) -> Any:
    from dask.distributed import Client

    return Client(address, timeout=CLIENT_TIMEOUT)


class PartitionedIndex:
    """A custodian index served by the workers of the Dask cluster at `address`, in `parts`
    partitions (by default: as many as already built, else one per worker), built by those
    workers at first use."""

    def __init__(self, index: CustodianIndex, address: str, parts: int | None = None) -> None:
        self.index = index
        self.address = address
        self.parts = parts

    def prepare(self) -> Placement:
        """The partitions on the cluster's workers, built now if missing."""
        with _client(self.address) as client:
            return self.place(client)

    def place(self, client: Any) -> Placement:
        """The partitions on the cluster's workers, built first if missing (other partition
        counts, and partitions a crash left half-built, are removed)."""
        workers = tuple(sorted(client.scheduler_info()["workers"]))
        if not workers:
            raise BlindlinkError(f"the Dask cluster at {self.address} has no workers")
        root = self.index.directory / PARTITIONS_DIR
        parts = self.parts or _complete_count(root) or len(workers)
        placement = Placement(self.address, root / str(parts), parts, workers)
        missing = [
            p for p in range(parts) if not (placement.directory / str(p) / MANIFEST).exists()
        ]
        if missing:
            self._build(client, placement, missing)
        return placement

    def _build(self, client: Any, placement: Placement, missing: list[int]) -> None:
        root = placement.directory.parent
        for path in root.iterdir() if root.exists() else ():
            if path != placement.directory:
                shutil.rmtree(path)
        for directory in (root, placement.directory):  # readable by the server's user only
            directory.mkdir(mode=0o700, exist_ok=True)
        for path in placement.directory.iterdir():
            if not (path / MANIFEST).exists():
                shutil.rmtree(path)
        built = [
            placement.submit(
                client,
                build_partition,
                part,
                self.index.directory,
                part,
                placement.parts,
                placement.directory / str(part),
            )
            for part in missing
        ]
        seconds = client.gather(built)
        log.info(
            "custodian index of upload %s partitioned on %d workers: %d partitions built in "
            "%.1f s (slowest)",
            self.index.manifest.upload_id[:12],
            len(placement.workers),
            len(missing),
            max(seconds),
        )

    def batch(self, requester: np.ndarray, requester_keys: np.ndarray) -> IndexedBatch:
        """The batch against the custodian records it shares a key value with, gathered from
        the partitions holding its values (their rows and keys, not their encodings), to be
        matched on those partitions by the batch's `executor`."""
        with _client(self.address) as client:
            placement = self.place(client)
            shares = list(placement.shares(requester_keys))
            found = client.gather(
                [
                    placement.submit(client, gather_on_partition, part, placement.path(part), keys)
                    for part, _, keys in shares
                ]
            )
        # Each value is counted in its own partition, 0 in the others (their shares of the
        # batch's keys have 0 for it).
        counts = np.zeros(requester_keys.shape, dtype=np.int64)
        for (_, batch_rows, _), (_, _, partition_counts) in zip(shares, found, strict=True):
            counts[batch_rows] += partition_counts
        rows = np.concatenate([np.empty(0, np.int64), *(f[0] for f in found)])
        keys = np.concatenate(
            [np.empty((0, requester_keys.shape[1]), np.uint64), *(f[1] for f in found)]
        )
        # A record sharing values held by several partitions comes from each of them.
        order = np.argsort(rows, kind="stable")
        rows, keys = rows[order], keys[order]
        first = np.r_[True, rows[1:] != rows[:-1]] if len(rows) else np.zeros(0, bool)
        rows, keys = rows[first], keys[first]
        key = batch_key(self.index.manifest, requester, requester_keys)
        shared = SharedEncodings(
            requester, np.empty((len(rows), 0), np.uint8), requester_keys, keys, key, counts
        )
        executor = PartitionExecutor(placement, rows)
        return IndexedBatch(shared, rows, executor, self.index.encodings)


class PartitionExecutor:
    """Runs a batch's blocking-key tasks on the partitions holding its key values, each on the
    worker serving it; the results' custodian rows are the batch's (positions among its
    gathered `custodian_rows`)."""

    def __init__(self, placement: Placement, custodian_rows: np.ndarray) -> None:
        self.placement = placement
        self.custodian_rows = custodian_rows

    def describe(self) -> str:
        return (
            f"{self.placement.parts} index partitions on the Dask cluster at "
            f"{self.placement.address}"
        )

    def run(self, fn: TaskFunction, tasks: Sequence[Any], shared: Any) -> Iterator[Any]:
        from dask.distributed import as_completed

        placement = self.placement
        with _client(placement.address) as client:
            futures = {
                placement.submit(
                    client,
                    run_on_partition,
                    part,
                    fn,
                    tasks,
                    placement.path(part),
                    (part, placement.parts, shared.key),
                    shared.requester[rows],
                    keys,
                ): rows
                for part, rows, keys in placement.shares(shared.requester_keys)
            }
            try:
                for future in as_completed(list(futures)):
                    rows = futures[future]
                    for result in future.result():
                        yield replace(
                            result,
                            requester_rows=rows[result.requester_rows],
                            custodian_rows=np.searchsorted(
                                self.custodian_rows, result.custodian_rows
                            ),
                        )
            finally:
                client.cancel(list(futures))
