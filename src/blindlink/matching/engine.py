"""Parallel candidate generation: plan tasks, run them on an executor, merge, enforce limits.

Without blocking the work is anonlink's all-pairs comparison, split into chunks with anonlink's
`split_to_chunks`; with blocking each LSH band, or each agreed blocking key, is a task. Either
way the merged candidates are sorted exactly as anonlink sorts them, so the 1:1 solution is
identical whatever the executor.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from blindlink.matching import kernel
from blindlink.matching.blocking import (
    Blocking,
    KeyBlocking,
    LshBlocking,
    custodian_key_counts,
    key_loads,
    split_records,
)
from blindlink.matching.executors import Executor, TaskStopped, stop_requested

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
    from anonlink.concurrency import split_to_chunks

CHUNK_COMPARISONS = 100_000_000
# LSH bands compared by one task. A task returns each requester record's candidates across its
# bands: more bands per task mean fewer results to send and merge, but coarser progress and
# more time at the end when one worker finishes its last task while the others have none.
BANDS_PER_TASK = 15
# Task results are merged once this many candidate pairs wait to be.
COMPACT_ROWS = 5_000_000
# Bytes per record that anonlink's bitarray form (without the native kernel) costs beyond the
# encoding itself.
BITARRAY_OVERHEAD_BYTES = 100

Progress = Callable[[int, int], None]


class MatchingAborted(Exception):
    """The run would break an operator limit; the message says which and by how much (for the
    operator: it quotes record and comparison counts), `limit` names the setting."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class MatchingLimits:
    """Operator limits on one run."""

    max_candidate_pairs: int = 100_000_000
    max_memory_bytes: int = 8 << 30
    # 1M x 1M all pairs; blocking keys count a pair once per key it shares.
    max_comparisons: int = 10**12


DEFAULT_LIMITS = MatchingLimits()


@dataclass(frozen=True)
class SharedEncodings:
    """Both parties' encodings, and their blocking keys if the agreement has them, shipped once
    to every worker."""

    requester: np.ndarray  # uint8, (records, bytes per encoding)
    custodian: np.ndarray
    requester_keys: np.ndarray | None = None  # uint64, (records, blocking keys); 0: no key
    custodian_keys: np.ndarray | None = None
    key: str = field(default="")
    # Per requester record and blocking key, the custodian records with its value, when a
    # custodian index read them from its postings (`key_counts` counts them otherwise).
    custodian_counts: np.ndarray | None = None

    @cached_property
    def key_counts(self) -> np.ndarray:
        """Per requester record and blocking key, how many custodian records have its value
        (blocking.custodian_key_counts): the custodian's group sizes of the batch's keys."""
        if self.custodian_counts is not None:
            return self.custodian_counts
        assert self.requester_keys is not None and self.custodian_keys is not None
        return custodian_key_counts(self.requester_keys, self.custodian_keys)

    @classmethod
    def of(
        cls,
        requester: np.ndarray,
        custodian: np.ndarray,
        requester_keys: np.ndarray | None = None,
        custodian_keys: np.ndarray | None = None,
    ) -> SharedEncodings:
        digest = hashlib.sha256()
        for array in (requester, custodian, requester_keys, custodian_keys):
            digest.update(b"-" if array is None else array.tobytes())
        return cls(requester, custodian, requester_keys, custodian_keys, digest.hexdigest())

    @classmethod
    def from_rows(
        cls, requester: np.ndarray, custodian: np.ndarray, blocking_keys: int
    ) -> SharedEncodings:
        """Split uploaded records (each an encoding followed by `blocking_keys` little-endian
        64-bit keys) into encodings and keys."""
        if not blocking_keys:
            return cls.of(requester, custodian)
        (encodings_a, keys_a), (encodings_b, keys_b) = (
            split_records(rows, blocking_keys) for rows in (requester, custodian)
        )
        return cls.of(encodings_a, encodings_b, keys_a, keys_b)


@dataclass(frozen=True)
class ChunkTask:
    requester: tuple[int, int]
    custodian: tuple[int, int]
    threshold: float
    best: int = 0

    @property
    def comparisons(self) -> int:
        return (self.requester[1] - self.requester[0]) * (self.custodian[1] - self.custodian[0])


@dataclass(frozen=True)
class BandTask:
    """Blocking bands: LSH bands' bit positions (bands, bits per band), or the column of one
    agreed blocking key."""

    threshold: float
    positions: np.ndarray | None = None
    key_column: int | None = None
    best: int = 0


@dataclass(frozen=True)
class TaskResult:
    """A task's candidates. Those of blocking bands, or of chunks keeping each record's best,
    are listed each once in `kernel.kept`'s order (requester row first), for merging."""

    similarities: np.ndarray
    requester_rows: np.ndarray
    custodian_rows: np.ndarray
    comparisons: int
    bands: int = 0  # LSH bands compared


@dataclass(frozen=True)
class Candidates:
    """Candidate pairs sorted by decreasing similarity, then requester row, custodian row."""

    similarities: np.ndarray
    requester_rows: np.ndarray
    custodian_rows: np.ndarray
    comparisons: int
    all_pairs: int

    @property
    def reduction_ratio(self) -> float:
        """1 - comparisons / all pairs (blocking counts a pair once per band it shares)."""
        return 1.0 - self.comparisons / self.all_pairs if self.all_pairs else 0.0


_all_pairs_cache: dict[str, kernel.AllPairs] = {}


def _all_pairs(shared: SharedEncodings) -> kernel.AllPairs:
    """The shared encodings in the kernel's all-pairs form, made once per worker process."""
    if shared.key not in _all_pairs_cache:
        _all_pairs_cache.clear()
        _all_pairs_cache[shared.key] = kernel.AllPairs(shared.requester, shared.custodian)
    return _all_pairs_cache[shared.key]


def compare_chunk(task: ChunkTask, shared: SharedEncodings) -> TaskResult:
    """anonlink's all-pairs comparison of one chunk: the pairs at or above the threshold, and
    each requester record's `best` most similar custodian records of the chunk (a pair may be
    listed twice; find_candidates keeps each once)."""
    data = _all_pairs(shared)
    (a, b), (c, d) = task.requester, task.custodian
    if not task.best:
        sims, r0, r1 = data.pairs(slice(a, b), (c, d), task.threshold)
        return TaskResult(sims, r0 + a, r1 + c, task.comparisons)
    sims, r0, r1 = data.pairs(slice(a, b), (c, d), 0.0, task.best)
    r0 = r0 + a
    if task.threshold <= 1.0:
        # Records whose `best` candidates all reach the threshold may have more that do.
        rows, counts = np.unique(r0, return_counts=True)
        lowest = np.full(b - a, np.inf)
        np.minimum.at(lowest, r0 - a, sims)
        crowded = [int(r) for r in rows[counts == task.best] if lowest[r - a] >= task.threshold]
        if crowded:
            chosen = np.asarray(crowded, dtype=np.int64)
            more, m0, m1 = data.pairs(chosen, (c, d), task.threshold)
            sims, r1 = np.r_[sims, more], np.r_[r1, m1]
            r0 = np.r_[r0, chosen[m0]]
    return TaskResult(*kernel.kept((sims, r0, r1 + c), task.threshold, task.best), task.comparisons)


class _BandData:
    """Per-worker forms of the encodings for blocking, each made once: popcounts, and for LSH
    the encodings transposed so that a band's bits are read contiguously."""

    def __init__(self, shared: SharedEncodings) -> None:
        self.shared = shared

    @cached_property
    def popcounts(self) -> tuple[np.ndarray, np.ndarray]:
        return kernel.popcounts(self.shared.requester), kernel.popcounts(self.shared.custodian)

    @cached_property
    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.ascontiguousarray(self.shared.requester.T),
            np.ascontiguousarray(self.shared.custodian.T),
        )


_band_cache: dict[str, _BandData] = {}


def _band_data(shared: SharedEncodings) -> _BandData:
    if shared.key not in _band_cache:
        _band_cache.clear()
        _band_cache[shared.key] = _BandData(shared)
    return _band_cache[shared.key]


def compare_bands(task: BandTask, shared: SharedEncodings) -> TaskResult:
    """Dice of the pairs that share one of the task's bands: those at or above the threshold,
    and each requester record's `best` across the bands."""
    data = _band_data(shared)
    found = kernel.BestPairs(
        shared.requester, shared.custodian, *data.popcounts, task.threshold, task.best
    )
    comparisons = 0
    for (keys_a, rows_a), (keys_b, rows_b) in _band_members(task, shared, data):
        if stop_requested():
            raise TaskStopped
        groups = kernel.KeyGroups.of(keys_a, rows_a, keys_b, rows_b)
        found.add(groups)
        comparisons += groups.comparisons
    bands = 0 if task.positions is None else len(task.positions)
    return TaskResult(*found.pairs(), comparisons, bands)


Members = tuple[np.ndarray, np.ndarray]  # band keys, and the rows of the records that have them


def _band_members(
    task: BandTask, shared: SharedEncodings, data: _BandData
) -> Iterator[tuple[Members, Members]]:
    """Per band, for each party the band keys of the records in the band and those records'
    rows: every record for LSH; for a blocking key, the records that have one (0 means a
    missing field)."""
    if task.positions is not None:
        columns_a, columns_b = data.columns
        rows_a, rows_b = np.arange(columns_a.shape[1]), np.arange(columns_b.shape[1])
        for positions in task.positions:
            yield (
                (kernel.band_keys(columns_a, positions), rows_a),
                (kernel.band_keys(columns_b, positions), rows_b),
            )
        return
    members = []
    for keys in (shared.requester_keys, shared.custodian_keys):
        assert keys is not None, "blocking keys were not loaded"
        column = keys[:, task.key_column]
        rows = np.flatnonzero(column)
        members.append((column[rows], rows))
    yield members[0], members[1]


def plan(
    shared: SharedEncodings, threshold: float, blocking: Blocking | None, best: int = 0
) -> list[ChunkTask] | list[BandTask]:
    sizes = [len(shared.requester), len(shared.custodian)]
    if isinstance(blocking, LshBlocking):
        positions = blocking.positions(shared.requester.shape[1] * 8)
        parts = -(-len(positions) // BANDS_PER_TASK)
        return [
            BandTask(threshold, positions=p, best=best) for p in np.array_split(positions, parts)
        ]
    if isinstance(blocking, KeyBlocking):
        return [BandTask(threshold, key_column=k, best=best) for k in range(len(blocking.keys))]
    return [
        ChunkTask(tuple(c[0]["range"]), tuple(c[1]["range"]), threshold, best)  # type: ignore[misc]
        for c in split_to_chunks(CHUNK_COMPARISONS, dataset_sizes=sizes)
    ]


def check_memory(shared: SharedEncodings, workers: int, limits: MatchingLimits) -> None:
    """Refuse before starting when the encodings, copied to every worker with the form the
    kernel compares them in, would not fit."""
    records = len(shared.requester) + len(shared.custodian)
    width = shared.requester.shape[1]
    if kernel.active() == kernel.REFERENCE:
        per_copy = records * (width + BITARRAY_OVERHEAD_BYTES)
    else:  # the encodings and the custodian's interleaved copy
        per_copy = (records + len(shared.custodian)) * width
    needed = per_copy * (workers + 1)
    if needed > limits.max_memory_bytes:
        raise MatchingAborted(
            "max_memory_gb",
            f"matching {records} records on {workers} workers needs about "
            f"{needed / 2**30:.1f} GiB, above the operator's limit of "
            f"{limits.max_memory_bytes / 2**30:.1f} GiB",
        )


def find_candidates(
    shared: SharedEncodings,
    threshold: float,
    executor: Executor,
    workers: int,
    blocking: Blocking | None = None,
    limits: MatchingLimits = DEFAULT_LIMITS,
    progress: Progress = lambda done, total: None,
    best: int = 0,
) -> Candidates:
    """Candidate pairs at or above `threshold` (none when it is above 1), and each requester
    record's `best` most similar compared records whatever their similarity, with blocking if
    given, within `limits`. The best few give the match model the scores it learns from."""
    check_memory(shared, workers, limits)
    tasks = plan(shared, threshold, blocking, best)
    all_pairs = len(shared.requester) * len(shared.custodian)
    # Progress counts comparisons, except with LSH, whose comparisons are known band by band.
    by_band = isinstance(blocking, LshBlocking)
    total = (
        blocking.bands
        if isinstance(blocking, LshBlocking)
        else planned_comparisons(shared, blocking)
    )
    if not by_band and total > limits.max_comparisons:
        raise MatchingAborted(
            "max_comparisons",
            f"the run would make {total:,} comparisons, above the operator's limit of "
            f"{limits.max_comparisons:,}; use blocking, or more specific blocking keys",
        )
    parts: list[TaskResult] = []
    done = comparisons = kept = compacted = 0
    compare = compare_chunk if blocking is None else compare_bands
    for result in executor.run(compare, tasks, shared):  # type: ignore[arg-type]
        if result is None:  # no result yet: the progress callback may stop the run
            progress(done, total)
            continue
        parts.append(result)
        comparisons += result.comparisons
        done += result.bands if by_band else result.comparisons
        kept += len(result.similarities)
        too_many = kept > max(COMPACT_ROWS, 2 * compacted) or kept > limits.max_candidate_pairs
        if (blocking is not None or best) and too_many:
            # The same pair shares bands of several tasks, and a record's best in one task may
            # not be its best overall: keep each pair once, so memory and the limit count
            # distinct pairs. Merging again only once the rows have doubled keeps the server's
            # share of the work proportional to the pairs found.
            parts = [_kept(parts, threshold, best)]
            kept = compacted = len(parts[0].similarities)
        if kept > limits.max_candidate_pairs:
            raise MatchingAborted(
                "max_candidate_pairs",
                f"more than {limits.max_candidate_pairs} candidate pairs (the operator's "
                f"limit) after {done} of {total} units of work; raise the threshold or use "
                "blocking",
            )
        progress(done, total)
    if blocking is not None or best:
        merged = _kept(parts, threshold, best)
        sim, r0, r1 = merged.similarities, merged.requester_rows, merged.custodian_rows
        # Already by requester row, then similarity descending, then custodian row: sorting
        # stably by similarity alone gives the candidates' order.
        order = np.argsort(-sim, kind="stable")
    else:
        sim, r0, r1 = _concatenated(parts)
        order = np.lexsort((r1, r0, -sim))
    return Candidates(sim[order], r0[order], r1[order], comparisons, all_pairs)


def planned_comparisons(shared: SharedEncodings, blocking: KeyBlocking | None) -> int:
    """Comparisons a run makes without blocking, or with blocking keys (a pair once per key it
    shares)."""
    if blocking is None:
        return len(shared.requester) * len(shared.custodian)
    assert shared.requester_keys is not None
    loads = key_loads(blocking, shared.requester_keys, shared.key_counts, top=0)
    return sum(load.comparisons for load in loads)


def _kept(parts: list[TaskResult], threshold: float, best: int) -> TaskResult:
    """The parts' pairs, each once, that are candidates: at or above the threshold, or among
    their requester record's `best`; in `kernel.kept`'s order."""
    pairs = [(p.similarities, p.requester_rows, p.custodian_rows) for p in parts]
    return TaskResult(*kernel.merge_kept(pairs, threshold, best), 0)


def _concatenated(parts: list[TaskResult]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        return np.empty(0), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return (
        np.concatenate([p.similarities for p in parts]),
        np.concatenate([p.requester_rows for p in parts]),
        np.concatenate([p.custodian_rows for p in parts]),
    )
