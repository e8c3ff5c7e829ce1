"""Deleting encodings and results when the agreement's retention rules say so."""

from __future__ import annotations

import logging
import threading
import time

from blindlink.agreement.document import ReleaseKind
from blindlink.agreement.model import Agreement, parse_agreement
from blindlink.store.sqlite import DONE, Altered, Store

log = logging.getLogger("blindlink.server.retention")


def purge_expired(store: Store, now: float | None = None) -> list[str]:
    """Apply every project's retention rules; what was deleted, one line each.

    Deletes encodings older than encodings_ttl_seconds, results of runs finished more than
    results_ttl_seconds ago, and, where delete_encodings_after_release says so, the batches
    whose release every entitled party has fetched (normally deleted at the last fetch; this
    catches a server that stopped in between)."""
    now = time.time() if now is None else now
    deleted = []
    for project_id in store.project_ids():
        try:
            raw = store.agreement(project_id)
        except Altered as exc:
            log.error("retention skips project %s: %s", project_id, exc)
            continue
        if raw is None:
            continue
        agreement = parse_agreement(raw)
        released = {
            run.run_id
            for run in store.runs(project_id)
            if agreement.delete_encodings_after_release
            and run.fetched_by
            and release_complete(agreement, run.fetched_by)
        }
        for upload in store.uploads(project_id):
            if upload.path is None:
                continue
            if now - upload.committed_at > agreement.encodings_ttl_seconds:
                rule = "retention.encodings_ttl_seconds"
            elif upload.upload_id in released:
                rule = "retention.delete_encodings_after_release"
            else:
                continue
            if store.delete_encodings(upload, rule):
                deleted.append(f"encodings of upload {upload.upload_id} ({rule})")
        for run in store.runs(project_id):
            if (
                run.state == DONE
                and not run.results_deleted
                and run.finished_at is not None
                and now - run.finished_at > agreement.results_ttl_seconds
            ):
                rule = "retention.results_ttl_seconds"
                if store.delete_results(project_id, run.run_id, rule):
                    deleted.append(f"results of run {run.run_id} ({rule})")
    return deleted


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
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            purge_once(self._store)


def purge_once(store: Store) -> None:
    """`purge_expired`, logging what it deleted; a failure is logged and left for next time."""
    try:
        for line in purge_expired(store):
            log.info("retention deleted %s", line)
    except Exception:  # noqa: BLE001 - retried at the next interval
        log.error("purge failed", exc_info=True)
