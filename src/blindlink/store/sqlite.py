"""The server's state: one SQLite database (WAL) plus one encodings file per committed upload.

Invariants:
- An upload is committed by renaming its verified file into place and inserting its row in one
  transaction; a file without a row is garbage from a crash and is removed at start-up.
- Matches are stored in the same transaction that marks a run done: a run is either done with
  all its matches or not done.
- Reads never return another project's data; per-party filtering is the caller's policy.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    project_id TEXT PRIMARY KEY,
    agreement BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    project_id TEXT NOT NULL REFERENCES projects(project_id) ON DELETE CASCADE,
    party TEXT NOT NULL,
    count INTEGER NOT NULL,
    bit_length INTEGER NOT NULL,
    content_sha256 BLOB NOT NULL,
    file TEXT NOT NULL,
    committed_at REAL NOT NULL,
    PRIMARY KEY (project_id, party)
);
CREATE TABLE IF NOT EXISTS runs (
    project_id TEXT PRIMARY KEY REFERENCES projects(project_id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS matches (
    project_id TEXT NOT NULL REFERENCES projects(project_id) ON DELETE CASCADE,
    requester_row INTEGER NOT NULL,
    custodian_row INTEGER NOT NULL,
    similarity REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS matches_by_project ON matches(project_id);
"""

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


class AlreadyExists(Exception):
    """The row being created exists already."""


@dataclass(frozen=True)
class UploadRecord:
    project_id: str
    party: str
    count: int
    bit_length: int
    content_sha256: bytes
    path: Path


@dataclass(frozen=True)
class RunRecord:
    project_id: str
    state: str
    message: str


class Store:
    """Thread-safe access to the server's state under `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.encodings_dir = self.data_dir / "encodings"
        self.incoming_dir = self.data_dir / "incoming"
        for d in (self.data_dir, self.encodings_dir, self.incoming_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.data_dir / "blindlink.db", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._remove_orphan_files()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _remove_orphan_files(self) -> None:
        for leftover in self.incoming_dir.iterdir():
            leftover.unlink()
        committed = {row[0] for row in self._db.execute("SELECT file FROM uploads")}
        for path in self.encodings_dir.iterdir():
            if path.name not in committed:
                path.unlink()

    # Projects

    def create_project(self, project_id: str, agreement: bytes) -> None:
        """MUST raise AlreadyExists, changing nothing, when the project exists."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM projects WHERE project_id=?", (project_id,)).fetchone():
                raise AlreadyExists(project_id)
            db.execute(
                "INSERT INTO projects VALUES (?, ?, ?)", (project_id, agreement, time.time())
            )

    def agreement(self, project_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT agreement FROM projects WHERE project_id=?", (project_id,)
            ).fetchone()
        return row[0] if row else None

    def delete_project(self, project_id: str) -> bool:
        """Delete the project's rows, then its encodings files. False if there was no project."""
        with self._transaction() as db:
            files = [
                r[0]
                for r in db.execute("SELECT file FROM uploads WHERE project_id=?", (project_id,))
            ]
            deleted = db.execute("DELETE FROM projects WHERE project_id=?", (project_id,)).rowcount
            db.execute("DELETE FROM matches WHERE project_id=?", (project_id,))
        for name in files:
            (self.encodings_dir / name).unlink(missing_ok=True)
        return bool(deleted)

    # Uploads

    def incoming_path(self) -> Path:
        """A fresh path for an upload in progress."""
        return self.incoming_dir / f"{uuid.uuid4().hex}.bin"

    def commit_upload(self, upload: UploadRecord, parties: tuple[str, ...]) -> bool:
        """Move the verified file at `upload.path` into place and record it, atomically.

        MUST raise AlreadyExists (removing the file, changing nothing else) when the party has
        uploaded already. Returns True when this upload completes the set of `parties`, in which
        case a queued run is recorded in the same transaction.
        """
        name = f"{upload.project_id[:16]}-{upload.party}-{uuid.uuid4().hex}.bin"
        final = self.encodings_dir / name
        try:
            with self._transaction() as db:
                if db.execute(
                    "SELECT 1 FROM uploads WHERE project_id=? AND party=?",
                    (upload.project_id, upload.party),
                ).fetchone():
                    raise AlreadyExists(f"{upload.project_id}/{upload.party}")
                os.replace(upload.path, final)
                _fsync_dir(self.encodings_dir)
                db.execute(
                    "INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        upload.project_id,
                        upload.party,
                        upload.count,
                        upload.bit_length,
                        upload.content_sha256,
                        name,
                        time.time(),
                    ),
                )
                uploaded = {
                    r[0]
                    for r in db.execute(
                        "SELECT party FROM uploads WHERE project_id=?", (upload.project_id,)
                    )
                }
                complete = uploaded >= set(parties)
                if complete:
                    db.execute(
                        "INSERT INTO runs VALUES (?, ?, '', ?)",
                        (upload.project_id, QUEUED, time.time()),
                    )
        except BaseException:
            upload.path.unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            raise
        return complete

    def uploads(self, project_id: str) -> dict[str, UploadRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT party, count, bit_length, content_sha256, file FROM uploads "
                "WHERE project_id=?",
                (project_id,),
            ).fetchall()
        return {
            party: UploadRecord(project_id, party, count, bits, digest, self.encodings_dir / name)
            for party, count, bits, digest, name in rows
        }

    # Runs

    def run(self, project_id: str) -> RunRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT state, message FROM runs WHERE project_id=?", (project_id,)
            ).fetchone()
        return RunRecord(project_id, row[0], row[1]) if row else None

    def unfinished_runs(self) -> list[str]:
        """Runs queued or running, e.g. when the server stopped; oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT project_id FROM runs WHERE state IN (?, ?) ORDER BY updated_at",
                (QUEUED, RUNNING),
            ).fetchall()
        return [r[0] for r in rows]

    def set_run_state(self, project_id: str, state: str, message: str = "") -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET state=?, message=?, updated_at=? WHERE project_id=?",
                (state, message, time.time(), project_id),
            )

    def finish_run(
        self,
        project_id: str,
        requester_rows: np.ndarray,
        custodian_rows: np.ndarray,
        similarities: np.ndarray,
    ) -> None:
        """Store the matches and mark the run done, atomically; replaces any earlier matches."""
        rows = zip(
            [project_id] * len(requester_rows),
            requester_rows.tolist(),
            custodian_rows.tolist(),
            similarities.tolist(),
            strict=True,
        )
        with self._transaction() as db:
            db.execute("DELETE FROM matches WHERE project_id=?", (project_id,))
            db.executemany("INSERT INTO matches VALUES (?, ?, ?, ?)", rows)
            db.execute(
                "UPDATE runs SET state=?, message='', updated_at=? WHERE project_id=?",
                (DONE, time.time(), project_id),
            )

    def matches(self, project_id: str) -> tuple[list[int], list[int]]:
        """(requester rows, custodian rows) of the project's matches, by requester row."""
        with self._lock:
            rows = self._db.execute(
                "SELECT requester_row, custodian_row FROM matches WHERE project_id=? "
                "ORDER BY requester_row",
                (project_id,),
            ).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def match_count(self, project_id: str) -> int:
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM matches WHERE project_id=?", (project_id,)
            ).fetchone()[0]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
