"""Background matching runs: one worker thread takes queued projects and links them."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from blindlink.agreement.model import parse_agreement
from blindlink.encoding.encodings_file import read_payload
from blindlink.matching.linkage import match, to_bitarrays
from blindlink.store.sqlite import DONE, FAILED, QUEUED, RUNNING, Store

log = logging.getLogger("blindlink.server.runs")


@dataclass(frozen=True)
class RunProgress:
    state: str
    stage: str = ""
    done: int = 0
    total: int = 0
    message: str = ""


class RunQueue:
    """Runs queued projects one at a time; progress is kept in memory, outcomes in the store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._progress: dict[str, RunProgress] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="blindlink-runs", daemon=True)

    def start(self) -> None:
        """Start the worker and requeue runs a previous server process left unfinished."""
        for project_id in self._store.unfinished_runs():
            log.info("resuming run %s", project_id[:12])
            self.enqueue(project_id)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def enqueue(self, project_id: str) -> None:
        self._set(project_id, RunProgress(QUEUED))
        self._queue.put(project_id)

    def progress(self, project_id: str) -> RunProgress | None:
        """Live progress if this process has seen the run, else what the store recorded."""
        with self._lock:
            live = self._progress.get(project_id)
        if live is not None:
            return live
        record = self._store.run(project_id)
        return RunProgress(record.state, message=record.message) if record else None

    def forget(self, project_id: str) -> None:
        with self._lock:
            self._progress.pop(project_id, None)

    def _set(self, project_id: str, progress: RunProgress) -> None:
        with self._lock:
            self._progress[project_id] = progress

    def _work(self) -> None:
        while (project_id := self._queue.get()) is not None:
            try:
                self._run(project_id)
            except Exception as exc:  # noqa: BLE001 - a failed run must not stop the worker
                log.error("run %s failed: %s", project_id[:12], type(exc).__name__)
                message = f"run failed: {type(exc).__name__}"
                self._store.set_run_state(project_id, FAILED, message)
                self._set(project_id, RunProgress(FAILED, message=message))

    def _run(self, project_id: str) -> None:
        raw = self._store.agreement(project_id)
        if raw is None:  # deleted while queued
            self.forget(project_id)
            return
        agreement = parse_agreement(raw)
        started = time.monotonic()
        self._store.set_run_state(project_id, RUNNING)
        self._set(project_id, RunProgress(RUNNING, "loading"))
        uploads = self._store.uploads(project_id)
        datasets = []
        for role in ("requester", "custodian"):
            header, payload = read_payload(uploads[role].path)
            datasets.append(to_bitarrays(payload, header.bit_length))

        def report(done: int, total: int) -> None:
            self._set(project_id, RunProgress(RUNNING, "comparing", done, total))

        matches = match(datasets[0], datasets[1], agreement.threshold, report)
        self._set(project_id, RunProgress(RUNNING, "storing", len(matches), len(matches)))
        self._store.finish_run(
            project_id, matches.requester_rows, matches.custodian_rows, matches.similarities
        )
        self._set(project_id, RunProgress(DONE, "done", len(matches), len(matches)))
        log.info(
            "run %s done: %d matches in %.1f s",
            project_id[:12],
            len(matches),
            time.monotonic() - started,
        )
