"""Background matching runs: one worker thread takes queued runs and links them."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from blindlink.agreement.model import parse_agreement
from blindlink.encoding.encodings_file import read_records
from blindlink.index.custodian import CustodianIndex, IndexedBatch
from blindlink.index.directory import CustodianIndexes
from blindlink.index.partitions import PartitionedIndex
from blindlink.matching.blocking import (
    Blocking,
    KeyBlocking,
    KeyLoad,
    LshBlocking,
    describe_key_loads,
    key_loads,
    split_records,
)
from blindlink.matching.decision import link
from blindlink.matching.engine import (
    DEFAULT_LIMITS,
    MatchingAborted,
    MatchingLimits,
    SharedEncodings,
    planned_comparisons,
)
from blindlink.matching.executors import (
    DaskExecutor,
    Executor,
    LocalPoolExecutor,
    SerialExecutor,
)
from blindlink.store.sqlite import DONE, FAILED, QUEUED, RUNNING, Altered, Store, UploadRecord

log = logging.getLogger("blindlink.server.runs")

# Below this many comparisons a run stays in the server process (about 0.1 s of work).
POOL_MIN_COMPARISONS = 25_000_000


@dataclass(frozen=True)
class RunProgress:
    state: str
    stage: str = ""
    done: int = 0
    total: int = 0
    message: str = ""
    rate: float = 0.0  # units of work per second while comparing
    unit: str = ""  # "comparisons", or "bands" with LSH blocking
    seconds_left: float = 0.0  # estimated, while comparing


@dataclass(frozen=True)
class MatchingSettings:
    """The operator's choices for running matches: where, on how many workers, within what."""

    executor: Executor
    workers: int
    limits: MatchingLimits

    def executor_for(
        self, comparisons: int, indexed: IndexedBatch | None = None
    ) -> tuple[Executor, int]:
        """The executor and worker count for a run of this size: a batch whose custodian
        records stay on the index's partitions is matched there; small runs stay in this
        process, where starting workers would cost more than it saves."""
        if indexed is not None and indexed.executor is not None:
            return indexed.executor, 1
        if isinstance(self.executor, LocalPoolExecutor) and comparisons < POOL_MIN_COMPARISONS:
            return SerialExecutor(), 1
        return self.executor, self.workers

    def indexed_batch(
        self, index: CustodianIndex, requester: np.ndarray, requester_keys: np.ndarray
    ) -> IndexedBatch:
        """A batch (encodings, keys) against the custodian's index: on a Dask cluster, against
        the index partitioned across its workers; otherwise read in this process."""
        if isinstance(self.executor, DaskExecutor):
            return PartitionedIndex(index, self.executor.address).batch(requester, requester_keys)
        return index.batch(requester, requester_keys)

    def place(self, index: CustodianIndex) -> None:
        """On a Dask cluster, partition the custodian's index across its workers now, rather
        than at the first batch."""
        if isinstance(self.executor, DaskExecutor):
            PartitionedIndex(index, self.executor.address).prepare()

    @classmethod
    def local(
        cls, workers: int | None = None, limits: MatchingLimits = DEFAULT_LIMITS
    ) -> MatchingSettings:
        pool = LocalPoolExecutor(workers)
        return cls(pool, pool.workers, limits)


class RunFailed(Exception):
    """A run cannot complete, for a reason the parties may be told."""


class RunInterrupted(Exception):
    """The server is stopping; the run stays unfinished and is resumed at the next start."""


# How long the worker waits for a job before closing removed indexes it kept open.
IDLE_S = 10.0
# How long a stopping worker gets, beyond the grace period, to leave a run it was told to drop.
INTERRUPT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class _Job:
    project_id: str
    run_id: str = ""  # none: build the project's custodian index


class RunQueue:
    """Runs queued runs one at a time; progress is kept in memory, outcomes in the store.

    A run is left unfinished (queued or running) when the server stops before it is done, and
    is run again from the start when the server next starts: matching is deterministic, so the
    result is the one an uninterrupted run gives.

    With blocking keys, runs read the custodian's standing index (blindlink.index), built in
    this queue when the custodian's upload commits, or at a project's first run when it has
    none (a project from before indexes, or an index a crash left unfinished)."""

    def __init__(
        self,
        store: Store,
        matching: MatchingSettings,
        on_key_loads: Callable[[list[KeyLoad]], None] = lambda loads: None,
    ) -> None:
        self._store = store
        self._matching = matching
        self._on_key_loads = on_key_loads
        self.indexes = CustodianIndexes(store.index_dir)  # custodian updates build them too
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._progress: dict[str, RunProgress] = {}
        self._current = ""
        self._lock = threading.Condition()  # notified when a run's state or stage changes
        self._changes = 0
        self._stopping = threading.Event()
        self._interrupt = threading.Event()
        self._thread = threading.Thread(target=self._work, name="blindlink-runs", daemon=True)

    def start(self) -> None:
        """Start the worker and requeue runs a previous server process left unfinished."""
        for project_id, run_id in self._store.unfinished_runs():
            log.info("resuming run %s", run_id[:12])
            self.enqueue(project_id, run_id)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Take no further runs; give the run in progress `timeout` seconds to finish, then
        interrupt it (it is resumed at the next start)."""
        self._stopping.set()
        self._queue.put(None)
        if not self._thread.is_alive():
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.info("interrupting run %s; it resumes at the next start", self._current[:12])
            self._interrupt.set()
            self._thread.join(INTERRUPT_TIMEOUT_S)

    def enqueue(self, project_id: str, run_id: str) -> None:
        self._set(run_id, RunProgress(QUEUED))
        self._queue.put(_Job(project_id, run_id))

    def build_index(self, project_id: str) -> None:
        """Build the custodian's index, if the project blocks on keys, before the runs queued
        after this call."""
        self._queue.put(_Job(project_id))

    def progress(self, run_id: str) -> RunProgress | None:
        """Live progress of a run this process is working on or has queued."""
        with self._lock:
            return self._progress.get(run_id)

    def current(self) -> RunProgress | None:
        """Progress of the run being worked on, if any."""
        with self._lock:
            return self._progress.get(self._current) if self._current else None

    def queued(self) -> int:
        """Runs waiting for the worker."""
        with self._lock:
            return sum(p.state == QUEUED for p in self._progress.values())

    def changes(self) -> int:
        """How many times a run changed state or stage so far (see wait_for_change)."""
        with self._lock:
            return self._changes

    def wait_for_change(self, seen: int, timeout: float) -> bool:
        """Whether a run changed state or stage after `seen` changes (it was queued, started,
        moved to another stage, or finished or failed and was stored) within `timeout`
        seconds; returns as soon as one does. Progress within a stage (work done, time left)
        wakes no one: it is published at every task, and watchers read it at their pace."""
        with self._lock:
            return self._lock.wait_for(lambda: self._changes != seen, timeout)

    def _set(self, run_id: str, progress: RunProgress) -> None:
        with self._lock:
            before = self._progress.get(run_id)
            self._progress[run_id] = progress
            if before is None or (before.state, before.stage) != (progress.state, progress.stage):
                self._changed()

    def _forget(self, run_id: str) -> None:
        with self._lock:
            self._progress.pop(run_id, None)
            self._changed()

    def _changed(self) -> None:
        self._changes += 1
        self._lock.notify_all()

    def _next_job(self) -> _Job | None:
        """The next job; while none comes, every IDLE_S the indexes kept open whose
        directories were removed are closed."""
        while True:
            try:
                return self._queue.get(timeout=IDLE_S)
            except queue.Empty:
                self.indexes.let_go_of_removed()

    def _work(self) -> None:
        while (job := self._next_job()) is not None and not self._stopping.is_set():
            project_id, run_id = job.project_id, job.run_id
            if not run_id:
                self._prepare(project_id)
                continue
            with self._lock:
                self._current = run_id
            try:
                self._run(project_id, run_id)
            except RunInterrupted:
                return
            except Exception as exc:  # noqa: BLE001 - a failed run must not stop the worker
                log.error("run %s failed: %s", run_id[:12], _detail(exc))
                self._store.fail_run(project_id, run_id, f"run failed: {_reason(exc)}")
            with self._lock:
                self._current = ""
            self._forget(run_id)

    def _publish(self, run_id: str, progress: RunProgress) -> None:
        """Record a run's progress; stop it here if the server is being stopped."""
        if self._interrupt.is_set():
            raise RunInterrupted(run_id)
        self._set(run_id, progress)

    def _run(self, project_id: str, run_id: str) -> None:
        raw = self._store.agreement(project_id)
        run = self._store.run(project_id, run_id) if raw else None
        if raw is None or run is None or run.state in (DONE, FAILED):
            return  # deleted or finished meanwhile
        agreement = parse_agreement(raw)
        started = time.monotonic()
        self._store.start_run(project_id, run_id)
        self._publish(run_id, RunProgress(RUNNING, "loading"))
        batch = self._store.upload(run.batch_id)
        reference = self._store.live_custodian_upload(project_id)
        if batch is None or batch.path is None or reference is None or reference.path is None:
            raise RunFailed("encodings were deleted under the agreement's retention rules")
        keyed = agreement.blocking_keys
        indexed = None
        version = 0  # updates need blocking keys
        if keyed is None:
            shared = SharedEncodings.from_rows(
                read_records(batch.path), read_records(reference.path), 0
            )
        else:
            index = self._index(reference, len(keyed.keys))
            version = index.manifest.version
            indexed = self._matching.indexed_batch(
                index, *split_records(read_records(batch.path), len(keyed.keys))
            )
            shared = indexed.shared
        report = _ProgressReporter(lambda p: self._publish(run_id, p), agreement.blocking)
        # With blocking keys the comparisons are known before matching (LSH's are not): a run
        # that makes few stays in this process, where shipping the encodings to workers would
        # cost more than the kernel spends comparing.
        executor, workers = self._matching.executor_for(
            self._planned(run_id, shared, keyed), indexed
        )
        decisions = link(
            shared,
            agreement.rule_for_run(run.threshold),
            executor,
            workers,
            agreement.blocking,
            self._matching.limits,
            report,
            None if indexed is None else indexed.custodian_encodings,
            lambda: self._publish(run_id, RunProgress(RUNNING, "deciding")),
        )
        if indexed is not None:
            decisions = indexed.in_custodian_rows(decisions)
        self._publish(run_id, RunProgress(RUNNING, "storing"))
        self._store.finish_run(project_id, run_id, decisions, reference, version)
        summary = decisions.summary()
        log.info(
            "run %s done on %s: threshold %.3f (%s), %d matches, %d withheld, %d possible, "
            "in %.1f s",
            run_id[:12],
            executor.describe(),
            summary.threshold,
            summary.rule,
            summary.matches,
            summary.withheld,
            summary.possible,
            time.monotonic() - started,
        )

    def _prepare(self, project_id: str) -> None:
        """Build the custodian's index of a project that blocks on keys (on a Dask cluster,
        and its partitions); a failure is logged, and the project's next run tries again."""
        try:
            raw = self._store.agreement(project_id)
            keyed = parse_agreement(raw).blocking_keys if raw else None
            reference = self._store.live_custodian_upload(project_id)
            if keyed is not None and reference is not None:
                self._matching.place(self._index(reference, len(keyed.keys)))
        except Exception as exc:  # noqa: BLE001 - a failed build must not stop the worker
            log.error("custodian index of project %s not built: %s", project_id[:12], exc)

    def _index(self, reference: UploadRecord, key_count: int) -> CustodianIndex:
        """The standing index of the custodian's upload `reference` as its updates committed so
        far left it, built if it has none. An index finished after its encodings were deleted
        (retention, or the project's deletion, while it was built) is deleted too."""
        with self.indexes.lock:  # no update commits between reading its updates and opening
            updates = self._store.custodian_updates(reference.upload_id)
            index = self.indexes.ensure(reference, key_count, updates)
        live = self._store.upload(reference.upload_id)
        if live is None or live.path is None:
            self._store.remove_index(reference.upload_id)
            raise RunFailed("encodings were deleted under the agreement's retention rules")
        return index

    def _planned(self, run_id: str, shared: SharedEncodings, keyed: KeyBlocking | None) -> int:
        """The run's comparisons without blocking or with blocking keys. The keys' largest
        groups go to the operator (log and metrics; never to the parties, whose record counts
        they reveal) before matching, so that a run refused for a limit has them too."""
        if keyed is None:
            return planned_comparisons(shared, None)
        assert shared.requester_keys is not None
        loads = key_loads(keyed, shared.requester_keys, shared.key_counts)
        log.info("run %s blocking key groups: %s", run_id[:12], describe_key_loads(loads))
        self._on_key_loads(loads)
        return sum(load.comparisons for load in loads)


def _detail(exc: Exception) -> str:
    """Why a run failed, for the operator's log."""
    return (
        str(exc) if isinstance(exc, RunFailed | MatchingAborted | Altered) else type(exc).__name__
    )


def _reason(exc: Exception) -> str:
    """Why a run failed, for the parties: an operator limit is named without its figures,
    which quote both parties' record or comparison counts."""
    if isinstance(exc, MatchingAborted):
        return (
            f"the run is above the operator's limit {exc.limit} (the operator's log has the "
            "figures); ask the operator, or agree on blocking or more specific blocking keys"
        )
    return _detail(exc)


class _ProgressReporter:
    """Turns work done into progress with a rate and an estimated time to finish."""

    def __init__(self, publish: Callable[[RunProgress], None], blocking: Blocking | None) -> None:
        self._publish = publish
        self._unit = "bands" if isinstance(blocking, LshBlocking) else "comparisons"
        self._started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else 0.0
        self._publish(
            RunProgress(
                RUNNING,
                "comparing",
                done,
                total,
                f"{rate:,.0f} {self._unit}/s, about {eta:,.0f} s left",
                rate,
                self._unit,
                eta,
            )
        )
