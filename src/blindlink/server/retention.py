"""Deleting encodings and results when the agreement's retention rules say so."""

from __future__ import annotations

import logging
import threading
import time

from blindlink.agreement.model import Agreement, ReleaseKind, parse_agreement
from blindlink.store.sqlite import DONE, Store

log = logging.getLogger("blindlink.server.retention")


def purge_expired(store: Store, now: float | None = None) -> None:
    """Delete encodings older than encodings_ttl_seconds and results of runs finished more than
    results_ttl_seconds ago, in every project."""
    now = time.time() if now is None else now
    for project_id in store.project_ids():
        raw = store.agreement(project_id)
        if raw is None:
            continue
        agreement = parse_agreement(raw)
        for upload in store.uploads(project_id):
            if (
                upload.path is not None
                and now - upload.committed_at > agreement.encodings_ttl_seconds
            ):
                store.delete_encodings(upload, "retention.encodings_ttl_seconds")
        for run in store.runs(project_id):
            if (
                run.state == DONE
                and not run.results_deleted
                and run.finished_at is not None
                and now - run.finished_at > agreement.results_ttl_seconds
            ):
                store.delete_results(project_id, run.run_id, "retention.results_ttl_seconds")


def release_complete(agreement: Agreement, fetched_by: frozenset[str]) -> bool:
    """Whether every party the agreement grants something has fetched the run's release."""
    entitled = {role for role, kind in agreement.release.items() if kind is not ReleaseKind.NOTHING}
    return entitled <= fetched_by


class Purger:
    """Runs `purge_expired` every `interval` seconds in a background thread."""

    def __init__(self, store: Store, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="blindlink-purge", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                purge_expired(self._store)
            except Exception as exc:  # noqa: BLE001 - retry at the next interval
                log.error("purge failed: %s", type(exc).__name__)
