"""The run queue tells watchers of a run's new state or stage as it happens, not at their
next poll."""

from __future__ import annotations

import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindlink.server.runs import MatchingSettings, RunProgress, RunQueue
from blindlink.store.sqlite import RUNNING, Store


def test_a_watch_wakes_when_a_run_progresses(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    store = Store(data_dir, Ed25519PrivateKey.generate())
    try:
        runs = RunQueue(store, MatchingSettings.local(1))
        seen = runs.changes()
        assert not runs.wait_for_change(seen, 0.01)  # nothing happened
        queued = threading.Timer(0.05, runs.enqueue, ("project", "run"))
        queued.start()
        # Wakes when the run is queued, long before this timeout.
        assert runs.wait_for_change(seen, 600)
        queued.join()
        assert runs.changes() == seen + 1
        assert not runs.wait_for_change(runs.changes(), 0.01)
        # Progress within a stage wakes no one; a new stage does.
        runs._set("run", RunProgress(RUNNING, "comparing", 1, 10))
        seen = runs.changes()
        runs._set("run", RunProgress(RUNNING, "comparing", 5, 10))
        assert runs.changes() == seen
        runs._set("run", RunProgress(RUNNING, "storing"))
        assert runs.changes() == seen + 1
    finally:
        store.close()
