"""The server's state: one SQLite database (WAL) plus one encodings file per committed upload.

Invariants:
- Every state change and its audit-log entry are committed in one transaction.
- An upload is committed by renaming its verified file into place and inserting its row in the
  same transaction; a file without a row is garbage from a crash and is removed at start-up.
- A custodian upload's standing index (index/<upload_id>/, blindlink.index) lives no longer than
  its encodings: deleting them deletes it, and at start-up every directory in index/ that is not
  a live custodian upload's (e.g. one a crash left half-built) is removed.
- A custodian update is committed by one transaction (its row, its appended file renamed into
  place, its audit entry) after its index version was built; at start-up only each live upload's
  current version stays in index/, so a crash leaves the version before the update or after it.
  Deleting the custodian's encodings deletes its updates' appended files too.
- The records of rows a committed update removed are then overwritten with zeros in the files
  that hold them (erasure.py; the hashes the files have once erased are recorded in the update's
  transaction) and a `rows_erased` entry is appended; at start-up, rows not erased yet are.
- A run's matches are stored in the transaction that marks it done: a run is either done with
  all its matches or not done.
- Reads are per project (and per run); what a party may see is the caller's policy.
- A project's stored agreement hashes to its ID; `agreement` refuses one that does not.
- After each commit that appended audit entries, the audit checkpoint file names the newest
  entries; the store does not open a log that lacks an entry its checkpoint names.
- One Store at a time owns a data directory (an exclusive lock on `blindlink.lock`, released
  by the kernel even when the process is killed); read-only tools need no lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindlink.audit.chain import SCHEMA_SQL as AUDIT_SCHEMA
from blindlink.audit.chain import AuditEntry, AuditFormatError, add_project_links, append_entry
from blindlink.audit.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    checkpoint_problems,
    database_heads,
    read_checkpoint,
    write_checkpoint,
)
from blindlink.audit.commitments import commitment_key, match_set_sha256
from blindlink.errors import BlindlinkError, EncodingsFileError
from blindlink.index.layout import index_name
from blindlink.matching.decision import Decisions, DecisionSummary, PairStatus
from blindlink.security.keys import public_key_text
from blindlink.store.directory import (
    DATABASE_NAME,
    ENCODINGS_DIR,
    INCOMING_DIR,
    INDEX_DIR,
    STAGED_DIR,
    STAGED_TTL_S,
    lock_data_dir,
    make_private,
    sync_to_disk,
)
from blindlink.store.erasure import (
    committed_removals,
    erase_records,
    erased_hashes,
    stored_files,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    project_id TEXT PRIMARY KEY,
    agreement BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(project_id) ON DELETE CASCADE,
    party TEXT NOT NULL,
    count INTEGER NOT NULL,
    bit_length INTEGER NOT NULL,
    content_sha256 BLOB NOT NULL,
    file TEXT,  -- NULL once the encodings were deleted
    committed_at REAL NOT NULL,
    erased_sha256 BLOB  -- the file's payload hash once removed rows are erased (erasure.py)
);
CREATE INDEX IF NOT EXISTS uploads_by_project ON uploads(project_id, party);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(project_id) ON DELETE CASCADE,
    -- the requester batch's upload_id: never shown to the custodian, who sees the run
    batch_id TEXT NOT NULL,
    state TEXT NOT NULL,
    threshold REAL NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    approved INTEGER NOT NULL DEFAULT 0,
    match_count INTEGER NOT NULL DEFAULT 0,
    withheld_count INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL,
    results_deleted INTEGER NOT NULL DEFAULT 0,
    decision TEXT  -- JSON of the run's DecisionSummary once done
);
CREATE TABLE IF NOT EXISTS matches (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    requester_row INTEGER NOT NULL,
    custodian_row INTEGER NOT NULL,
    similarity REAL NOT NULL,
    status INTEGER NOT NULL,  -- PairStatus: match, withheld as ambiguous, possible match
    probability REAL  -- the match model's; NULL where it could not be fitted
);
CREATE INDEX IF NOT EXISTS matches_by_run ON matches(run_id);
-- The custodian's updates of its live upload: version 1, 2, ... in order; appended records get
-- the rows after the last one, removed rows stay numbered (blindlink.index applies them), and
-- their records are erased from the files that hold them once the update is committed.
CREATE TABLE IF NOT EXISTS custodian_updates (
    update_id TEXT PRIMARY KEY,
    upload_id TEXT NOT NULL REFERENCES uploads(upload_id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    appended INTEGER NOT NULL,
    removed_rows BLOB NOT NULL,  -- int64 little-endian
    file TEXT,  -- the appended encodings; NULL when none were appended or they were deleted
    committed_at REAL NOT NULL,
    erased_sha256 BLOB,  -- as uploads.erased_sha256, for the appended file
    erased_at REAL,  -- when its removed rows were erased from every file; NULL until then
    UNIQUE (upload_id, version)
);
CREATE TABLE IF NOT EXISTS releases (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    party TEXT NOT NULL,
    fetched_at REAL NOT NULL,
    PRIMARY KEY (run_id, party)
);
"""

WAITING, QUEUED, RUNNING, DONE, FAILED = "waiting", "queued", "running", "done", "failed"
RUN_STATES = (WAITING, QUEUED, RUNNING, DONE, FAILED)

log = logging.getLogger("blindlink.store")


class AlreadyExists(Exception):
    """The row being created exists already."""


class NotFound(Exception):
    """No such project or run."""


class Deleted(Exception):
    """The project was deleted; its ID cannot be used again."""


class Altered(Exception):
    """Stored state contradicts the hash that vouches for it: the database was edited."""


class CheckpointMismatch(BlindlinkError):
    """The audit log lacks an entry its checkpoint names, or the checkpoint is not the
    server's."""


@dataclass(frozen=True)
class UploadRecord:
    upload_id: str
    project_id: str
    party: str
    count: int
    bit_length: int
    content_sha256: bytes
    path: Path | None  # None once the encodings were deleted
    committed_at: float


@dataclass(frozen=True)
class CustodianUpdate:
    """One committed update of a custodian upload."""

    update_id: str
    upload_id: str
    version: int
    appended: int
    removed_rows: np.ndarray  # int64
    path: Path | None  # the appended encodings; None when none were appended or were deleted
    committed_at: float


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    batch_id: str
    project_id: str
    state: str
    threshold: float
    message: str
    approved: bool
    match_count: int
    withheld_count: int
    finished_at: float | None
    results_deleted: bool
    fetched_by: frozenset[str]
    decision: DecisionSummary | None  # once done; None for runs finished before decisions


def _live_batch(
    db: sqlite3.Connection,
    project_id: str,
    content_sha256: bytes,
    threshold: float,
    purpose: str | None,
) -> tuple[str, str] | None:
    """(upload, run) of the requester batch with this content, threshold and purpose whose run
    can still be released. The purpose's one home is the batch's upload_committed entry."""
    row = db.execute(
        "SELECT u.upload_id, r.run_id FROM uploads u JOIN runs r ON r.batch_id = u.upload_id "
        "WHERE u.project_id=? AND u.party='requester' AND u.content_sha256=? "
        "AND u.file IS NOT NULL AND r.threshold=? AND r.state != ? AND r.results_deleted = 0 "
        "AND (SELECT json_extract(a.details, '$.purpose') FROM audit_log a "
        "WHERE a.project_id = u.project_id AND a.kind = 'upload_committed' "
        "AND json_extract(a.details, '$.upload_id') = u.upload_id) IS ?",
        (project_id, content_sha256, threshold, FAILED, purpose),
    ).fetchone()
    return (row[0], row[1]) if row else None


def _past_uploads(db: sqlite3.Connection, project_id: str, party: str) -> list[tuple[float, int]]:
    return db.execute(
        "SELECT committed_at, count FROM uploads WHERE project_id=? AND party=? UNION ALL "
        "SELECT c.committed_at, c.appended FROM custodian_updates c JOIN uploads u USING "
        "(upload_id) WHERE u.project_id=? AND u.party=? AND c.appended > 0",
        (project_id, party, project_id, party),
    ).fetchall()


def _add_decisions(db: sqlite3.Connection) -> None:
    """Databases from before runs recorded their decisions: a match's `withheld` flag (0 or 1)
    is its status (match or withheld), and there was no model."""
    runs = [row[1] for row in db.execute("PRAGMA table_info(runs)")]
    if runs and "decision" not in runs:
        db.execute("ALTER TABLE runs ADD COLUMN decision TEXT")
    matches = [row[1] for row in db.execute("PRAGMA table_info(matches)")]
    if "withheld" in matches:
        db.execute("ALTER TABLE matches RENAME COLUMN withheld TO status")
        db.execute("ALTER TABLE matches ADD COLUMN probability REAL")


def _record_erased_hashes(db: sqlite3.Connection, erased: Mapping[Path, bytes]) -> None:
    for path, sha256 in erased.items():
        for table in ("uploads", "custodian_updates"):
            db.execute(f"UPDATE {table} SET erased_sha256=? WHERE file=?", (sha256, path.name))


def _add_erasures(db: sqlite3.Connection) -> None:
    """Databases from before removed rows were erased from the files: their erasures are
    pending (the store records the files' hashes and erases them at start)."""
    for table, columns in (
        ("uploads", ("erased_sha256 BLOB",)),
        ("custodian_updates", ("erased_sha256 BLOB", "erased_at REAL")),
    ):
        held = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
        for column in columns:
            if held and column.split()[0] not in held:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


def _add_batch_ids(db: sqlite3.Connection) -> None:
    """Databases from before runs had IDs of their own: a run's ID was its batch's upload ID."""
    columns = [row[1] for row in db.execute("PRAGMA table_info(runs)")]
    if columns and "batch_id" not in columns:
        db.execute("ALTER TABLE runs ADD COLUMN batch_id TEXT NOT NULL DEFAULT ''")
        db.execute("UPDATE runs SET batch_id = run_id")


@dataclass(frozen=True)
class Commit:
    """What committing an upload did."""

    upload_id: str
    run_id: str  # "" for a custodian upload
    queued_runs: list[str]
    receipt: AuditEntry


class Store:
    """Thread-safe access to the server's state under `data_dir`."""

    def __init__(self, data_dir: Path, signing_key: Ed25519PrivateKey) -> None:
        self.data_dir = Path(data_dir)
        self.encodings_dir = self.data_dir / ENCODINGS_DIR
        self.incoming_dir = self.data_dir / INCOMING_DIR
        self.staged_dir = self.data_dir / STAGED_DIR
        self.index_dir = self.data_dir / INDEX_DIR
        dirs = (self.encodings_dir, self.incoming_dir, self.staged_dir, self.index_dir)
        for d in (self.data_dir, *dirs):
            d.mkdir(parents=True, exist_ok=True)
        self._key = signing_key
        self.commitment_key = commitment_key(signing_key)
        self._owner = lock_data_dir(self.data_dir)
        self._lock = threading.RLock()
        database = self.data_dir / DATABASE_NAME
        os.close(os.open(database, os.O_CREAT | os.O_RDWR, 0o600))  # SQLite's files follow it
        make_private(self.data_dir)
        self._db = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # Deleted rows are overwritten and new pages zeroed, so neither a deleted project's
        # data nor stale process memory in a page's unused space reaches the files.
        self._db.execute("PRAGMA secure_delete=ON")
        _add_batch_ids(self._db)
        _add_decisions(self._db)
        _add_erasures(self._db)
        add_project_links(self._db)
        self._db.executescript(SCHEMA + AUDIT_SCHEMA)
        self._checkpoint_path = self.data_dir / CHECKPOINT_NAME
        try:
            self._checkpoint = self._open_checkpoint()
        except BaseException:
            self.close()
            raise
        self._appended: list[AuditEntry] = []  # by the transaction in progress
        self._remove_orphan_files()
        self._complete_erasures()

    def _open_checkpoint(self) -> Checkpoint:
        """Check the log against its checkpoint, then write the checkpoint of the log as it is
        (a crash may have left the checkpoint behind the log, never ahead of it)."""
        if self._checkpoint_path.exists():
            try:
                checkpoint = read_checkpoint(self._checkpoint_path, public_key_text(self._key))
            except AuditFormatError as exc:
                raise CheckpointMismatch(str(exc)) from None
            problems = checkpoint_problems(checkpoint, self._entry_hash_at)
            if problems:
                raise CheckpointMismatch(
                    f"{self._checkpoint_path}: {problems[0]}. The database was rolled back or "
                    "edited; run `blindlink admin verify`. After restoring a backup on "
                    "purpose, move the checkpoint aside (keep it) and start again."
                )
        else:
            log.warning("no audit checkpoint; writing one from the audit log")
        checkpoint = database_heads(self._db, datetime.now(UTC))
        write_checkpoint(self._checkpoint_path, self._key, checkpoint)
        return checkpoint

    def _entry_hash_at(self, seq: int) -> str | None:
        row = self._db.execute("SELECT entry_hash FROM audit_log WHERE seq=?", (seq,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._owner.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                self._appended.clear()
                raise
            self._db.execute("COMMIT")
            if self._appended:
                self._advance_checkpoint()

    def _advance_checkpoint(self) -> None:
        """Name the entries just committed in the checkpoint. A failure to write it is logged:
        the next commit writes it again, and meanwhile it only lags the log."""
        self._checkpoint = self._checkpoint.advanced(self._appended, datetime.now(UTC))
        self._appended.clear()
        try:
            write_checkpoint(self._checkpoint_path, self._key, self._checkpoint)
        except OSError as exc:
            log.error("cannot write the audit checkpoint: %s", exc)

    def _repeat(
        self,
        db: sqlite3.Connection,
        project_id: str,
        upload_id: str,
        run_id: str,
        content_sha256: bytes,
    ) -> Commit:
        details = {"upload_id": upload_id, "run_id": run_id, "content_sha256": content_sha256.hex()}
        receipt = self._audit(db, "upload_repeated", project_id, "requester", details)
        return Commit(upload_id, run_id, [], receipt)

    def _audit(
        self,
        db: sqlite3.Connection,
        kind: str,
        project_id: str,
        party: str,
        details: dict[str, Any],
    ) -> AuditEntry:
        entry = append_entry(db, self._key, kind, project_id, party, details)
        self._appended.append(entry)
        return entry

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _remove_orphan_files(self) -> None:
        for leftover in self.incoming_dir.iterdir():
            leftover.unlink()
        committed = {
            r[0]
            for r in self._read(
                "SELECT file FROM uploads WHERE file IS NOT NULL UNION "
                "SELECT file FROM custodian_updates WHERE file IS NOT NULL"
            )
        }
        for path in self.encodings_dir.iterdir():
            if path.name not in committed:
                path.unlink()
        live = {
            index_name(upload_id, version)
            for upload_id, version in self._read(
                "SELECT upload_id, (SELECT count(*) FROM custodian_updates c WHERE c.upload_id = "
                "u.upload_id) FROM uploads u WHERE party='custodian' AND file IS NOT NULL"
            )
        }
        for path in self.index_dir.iterdir():
            if path.name not in live:
                log.info("removing %s: no live custodian upload's current index", path.name)
                _remove_path(path)
        self.remove_expired_staged()

    def remove_index(self, upload_id: str) -> None:
        """Delete every version of a custodian upload's standing index in index/."""
        for path in (self.index_dir / upload_id, *self.index_dir.glob(f"{upload_id}.*")):
            _remove_path(path)

    # Projects

    def create_project(
        self, project_id: str, agreement: bytes, details: dict[str, Any], party: str
    ) -> AuditEntry:
        """MUST raise AlreadyExists, changing nothing, when the project exists, and Deleted when
        a party deleted it: its ID stays deleted (the audit log's record of the deletion is the
        tombstone), so one party alone cannot undo the other's deletion."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM projects WHERE project_id=?", (project_id,)).fetchone():
                raise AlreadyExists(project_id)
            if db.execute(
                "SELECT 1 FROM audit_log WHERE project_id=? AND kind='data_deleted' AND "
                "json_extract(details, '$.what')='project'",
                (project_id,),
            ).fetchone():
                raise Deleted(project_id)
            db.execute(
                "INSERT INTO projects VALUES (?, ?, ?)", (project_id, agreement, time.time())
            )
            return self._audit(db, "project_created", project_id, party, details)

    def agreement(self, project_id: str) -> bytes | None:
        """The project's agreement; MUST raise Altered if it does not hash to the project ID."""
        rows = self._read("SELECT agreement FROM projects WHERE project_id=?", (project_id,))
        if not rows:
            return None
        if hashlib.sha256(rows[0][0]).hexdigest() != project_id:
            raise Altered(
                f"the stored agreement of project {project_id} does not hash to the project ID: "
                "the server's database was altered"
            )
        return bytes(rows[0][0])

    def delete_project(self, project_id: str, party: str, reason: str) -> AuditEntry:
        """Delete the project's rows, then its encodings files; the audit log keeps the record."""
        with self._transaction() as db:
            files = db.execute(
                "SELECT upload_id, file FROM uploads WHERE project_id=? AND file IS NOT NULL "
                "UNION ALL SELECT c.upload_id, c.file FROM custodian_updates c JOIN uploads u "
                "USING (upload_id) WHERE u.project_id=? AND c.file IS NOT NULL",
                (project_id, project_id),
            ).fetchall()
            if not db.execute("DELETE FROM projects WHERE project_id=?", (project_id,)).rowcount:
                raise NotFound(project_id)
            entry = self._audit(
                db, "data_deleted", project_id, party, {"what": "project", "reason": reason}
            )
        for upload_id, name in files:
            (self.encodings_dir / name).unlink(missing_ok=True)
            self.remove_index(upload_id)
        for path in self.staged_dir.glob(f"{project_id}.*"):
            path.unlink(missing_ok=True)
        return entry

    # Uploads

    def staged_path(self, project_id: str, party: str, content_sha256: bytes) -> Path:
        """Where the party's interrupted upload of this content is kept, to be continued."""
        return self.staged_dir / f"{project_id}.{party}.{content_sha256.hex()}"

    def discard_staged(self, project_id: str, party: str, streaming: Collection[Path]) -> None:
        """Forget the uploads the party has kept in the project (a fresh start replaces them),
        but those `streaming` now."""
        for path in self.staged_dir.glob(f"{project_id}.{party}.*"):
            if path not in streaming:
                path.unlink(missing_ok=True)

    def remove_expired_staged(self) -> None:
        """Remove kept uploads STAGED_TTL_S after their last write, or of deleted projects."""
        projects = {r[0] for r in self._read("SELECT project_id FROM projects")}
        expired = time.time() - STAGED_TTL_S
        for path in self.staged_dir.iterdir():
            if path.name.split(".")[0] not in projects or path.stat().st_mtime < expired:
                path.unlink(missing_ok=True)

    def incoming_path(self) -> Path:
        """A fresh path for an upload in progress."""
        return self.incoming_dir / f"{uuid.uuid4().hex}.bin"

    def commit_upload(
        self,
        project_id: str,
        party: str,
        path: Path,
        count: int,
        bit_length: int,
        content_sha256: bytes,
        threshold: float,
        check_limits: Callable[[list[tuple[float, int]]], None],
        purpose: str | None = None,
    ) -> Commit:
        """Move the verified file at `path` into place and record it, atomically.

        A requester batch's `purpose` (its declared reason, never record data) is recorded in
        its upload_committed entry. A requester batch identical to one whose run is live (same
        content, threshold and purpose, its encodings and results still held, not failed) is
        not stored again: the earlier upload and run are returned with an `upload_repeated`
        receipt, so that retrying an upload whose reply was lost neither starts a second run
        nor counts against the limits.

        MUST raise NotFound, storing nothing, when the project was deleted meanwhile.
        `check_limits` gets the party's earlier uploads as (committed_at, count) inside the
        transaction, so concurrent uploads cannot both pass a limit; whatever it raises aborts
        the commit. A custodian upload MUST raise AlreadyExists (removing the file, changing
        nothing else) while the custodian has encodings on the server. A requester upload is a
        batch and creates a run: queued if the custodian has uploaded (the run fails if those
        encodings were deleted meanwhile), else waiting for the custodian.
        """
        upload_id = uuid.uuid4().hex
        name = f"{upload_id}.bin"
        final = self.encodings_dir / name
        try:
            with self._transaction() as db:
                if not db.execute(
                    "SELECT 1 FROM projects WHERE project_id=?", (project_id,)
                ).fetchone():
                    raise NotFound(project_id)  # deleted while the upload streamed
                if party == "requester":
                    repeated = _live_batch(db, project_id, content_sha256, threshold, purpose)
                    if repeated is not None:
                        path.unlink()
                        return self._repeat(db, project_id, *repeated, content_sha256)
                check_limits(_past_uploads(db, project_id, party))
                custodian_files = [
                    r[0]
                    for r in db.execute(
                        "SELECT file FROM uploads WHERE project_id=? AND party='custodian'",
                        (project_id,),
                    )
                ]
                custodian_uploaded = bool(custodian_files)
                if party == "custodian" and any(custodian_files):
                    raise AlreadyExists(f"{project_id}/custodian")
                os.chmod(path, 0o600)
                os.replace(path, final)
                sync_to_disk(self.encodings_dir)
                db.execute(
                    "INSERT INTO uploads (upload_id, project_id, party, count, bit_length, "
                    "content_sha256, file, committed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        upload_id,
                        project_id,
                        party,
                        count,
                        bit_length,
                        content_sha256,
                        name,
                        time.time(),
                    ),
                )
                details: dict[str, Any] = {
                    "upload_id": upload_id,
                    "count": count,
                    "bit_length": bit_length,
                    "content_sha256": content_sha256.hex(),
                }
                run_id, queued = "", []
                if party == "requester":
                    run_id = details["run_id"] = uuid.uuid4().hex
                    details["threshold"] = threshold
                    if purpose is not None:
                        details["purpose"] = purpose
                    db.execute(
                        "INSERT INTO runs (run_id, project_id, batch_id, state, threshold, "
                        "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            run_id,
                            project_id,
                            upload_id,
                            QUEUED if custodian_uploaded else WAITING,
                            threshold,
                            time.time(),
                        ),
                    )
                    queued = [run_id] if custodian_uploaded else []
                else:
                    queued = [
                        r[0]
                        for r in db.execute(
                            "SELECT run_id FROM runs WHERE project_id=? AND state=? "
                            "ORDER BY created_at",
                            (project_id, WAITING),
                        )
                    ]
                    db.execute(
                        "UPDATE runs SET state=? WHERE project_id=? AND state=?",
                        (QUEUED, project_id, WAITING),
                    )
                receipt = self._audit(db, "upload_committed", project_id, party, details)
        except BaseException:
            path.unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            raise
        return Commit(upload_id, run_id, queued, receipt)

    def uploads(self, project_id: str, party: str | None = None) -> list[UploadRecord]:
        """The project's uploads (of one party, if given), oldest first."""
        rows = self._read(
            "SELECT upload_id, party, count, bit_length, content_sha256, file, committed_at "
            "FROM uploads WHERE project_id=? AND (? IS NULL OR party=?) ORDER BY committed_at",
            (project_id, party, party),
        )
        return [
            UploadRecord(
                uid,
                project_id,
                p,
                count,
                bits,
                digest,
                self.encodings_dir / name if name else None,
                at,
            )
            for uid, p, count, bits, digest, name, at in rows
        ]

    def past_uploads(self, project_id: str, party: str) -> list[tuple[float, int]]:
        """(committed_at, records) of the party's uploads, the custodian's appends included: what
        the agreement's upload limits count."""
        with self._lock:
            return _past_uploads(self._db, project_id, party)

    def custodian_updates(self, upload_id: str) -> list[CustodianUpdate]:
        """The updates of a custodian upload, in order (version 1 first)."""
        rows = self._read(
            "SELECT update_id, version, appended, removed_rows, file, committed_at FROM "
            "custodian_updates WHERE upload_id=? ORDER BY version",
            (upload_id,),
        )
        return [
            CustodianUpdate(
                update_id,
                upload_id,
                version,
                appended,
                np.frombuffer(removed, dtype="<i8").astype(np.int64),
                self.encodings_dir / name if name else None,
                at,
            )
            for update_id, version, appended, removed, name, at in rows
        ]

    def commit_custodian_update(
        self,
        upload: UploadRecord,
        version: int,
        appended: Path | None,
        appended_count: int,
        removed_rows: np.ndarray,
        check_limits: Callable[[list[tuple[float, int]]], None],
        details: dict[str, Any],
        erased: Mapping[Path, bytes],
    ) -> AuditEntry:
        """Record update `version` of the custodian's `upload`, moving the verified file of
        appended encodings at `appended` (if any) into place, atomically, with a
        `custodian_updated` entry holding `details` and the hashes the files holding
        `removed_rows` will have once they are erased (`erased`, from `erasure_hashes`):
        `erase_removed_rows` erases them next.

        MUST raise NotFound, storing nothing, when the upload's encodings were deleted or its
        project meanwhile, and AlreadyExists when another update took `version` first.
        `check_limits` gets the custodian's earlier uploads and appends inside the transaction
        (only an update that appends counts as an upload)."""
        update_id = uuid.uuid4().hex
        name = f"{update_id}.bin" if appended is not None else None
        final = self.encodings_dir / name if name else None
        try:
            with self._transaction() as db:
                if not db.execute(
                    "SELECT 1 FROM uploads WHERE upload_id=? AND file IS NOT NULL",
                    (upload.upload_id,),
                ).fetchone():
                    raise NotFound(upload.upload_id)
                (current,) = db.execute(
                    "SELECT count(*) FROM custodian_updates WHERE upload_id=?",
                    (upload.upload_id,),
                ).fetchone()
                if current != version - 1:
                    raise AlreadyExists(f"{upload.upload_id} version {version}")
                if appended_count:
                    check_limits(_past_uploads(db, upload.project_id, "custodian"))
                if appended is not None and final is not None:
                    os.chmod(appended, 0o600)
                    os.replace(appended, final)
                    sync_to_disk(self.encodings_dir)
                db.execute(
                    "INSERT INTO custodian_updates (update_id, upload_id, version, appended, "
                    "removed_rows, file, committed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        update_id,
                        upload.upload_id,
                        version,
                        appended_count,
                        removed_rows.astype("<i8").tobytes(),
                        name,
                        time.time(),
                    ),
                )
                _record_erased_hashes(db, erased)
                return self._audit(
                    db,
                    "custodian_updated",
                    upload.project_id,
                    "custodian",
                    {"update_id": update_id, **details},
                )
        except BaseException:
            if appended is not None:
                appended.unlink(missing_ok=True)
            if final is not None:
                final.unlink(missing_ok=True)
            raise

    def erasure_hashes(self, upload_id: str, removed: np.ndarray) -> dict[Path, bytes]:
        """Per stored file of a custodian upload holding one of the rows `removed`, its hash
        once they are erased (for `commit_custodian_update`); EncodingsFileError if the file
        does not match its recorded hash."""
        with self._lock:
            files = stored_files(self._db, self.encodings_dir, upload_id)
        return erased_hashes(files, removed)

    def erase_removed_rows(self, upload_id: str) -> list[AuditEntry]:
        """Overwrite with zeros the records of the rows the committed updates of a custodian
        upload removed, in every stored file that holds them, then record each update whose
        rows were not erased yet as erased, with a `rows_erased` entry (the update, how many
        rows and files; no record content). Idempotent: after a crash the next start finishes
        it. An update from before erasures gets its files' erased hashes recorded first."""
        with self._lock:
            pending = self._db.execute(
                "SELECT c.update_id, c.version, c.removed_rows, u.project_id FROM "
                "custodian_updates c JOIN uploads u USING (upload_id) WHERE c.upload_id=? AND "
                "u.file IS NOT NULL AND c.erased_at IS NULL AND length(c.removed_rows) > 0 "
                "ORDER BY c.version",
                (upload_id,),
            ).fetchall()
            files = stored_files(self._db, self.encodings_dir, upload_id)
            removed = committed_removals(self._db, upload_id)
        if not pending:
            return []
        unrecorded = [f for f in files if len(np.setdiff1d(f.rows_in(removed), f.applied))]
        if unrecorded:
            with self._transaction() as db:
                _record_erased_hashes(db, erased_hashes(unrecorded, removed))
            with self._lock:
                files = stored_files(self._db, self.encodings_dir, upload_id)
        for stored in files:
            if len(stored.applied):
                erase_records(stored.path, stored.applied, stored.sha256)
        entries = []
        with self._transaction() as db:
            for update_id, version, rows, project_id in pending:
                rows = np.frombuffer(rows, "<i8")
                db.execute(
                    "UPDATE custodian_updates SET erased_at=? WHERE update_id=?",
                    (time.time(), update_id),
                )
                details = {
                    "update_id": update_id,
                    "upload_id": upload_id,
                    "version": version,
                    "erased": len(rows),
                    "files": sum(bool(len(f.rows_in(rows))) for f in files),
                }
                entries.append(self._audit(db, "rows_erased", project_id, "custodian", details))
        return entries

    def _complete_erasures(self) -> None:
        """Erase the removed rows that updates committed before a crash left in the files."""
        uploads = self._read(
            "SELECT DISTINCT c.upload_id FROM custodian_updates c JOIN uploads u USING "
            "(upload_id) WHERE u.file IS NOT NULL AND c.erased_at IS NULL AND "
            "length(c.removed_rows) > 0"
        )
        for (upload_id,) in uploads:
            try:
                erased = self.erase_removed_rows(upload_id)
            except (OSError, EncodingsFileError) as exc:
                log.error("removed rows of upload %s not erased: %s", upload_id[:12], exc)
                continue
            log.info(
                "erased the rows %d committed custodian updates of upload %s removed",
                len(erased),
                upload_id[:12],
            )

    def upload(self, upload_id: str) -> UploadRecord | None:
        rows = self._read("SELECT project_id FROM uploads WHERE upload_id=?", (upload_id,))
        if not rows:
            return None
        return next(u for u in self.uploads(rows[0][0]) if u.upload_id == upload_id)

    def repeats_live_batch(
        self, project_id: str, content_sha256: bytes, threshold: float, purpose: str | None
    ) -> bool:
        """Whether a requester batch with this content, threshold and purpose would be a
        repeat."""
        with self._lock:
            live = _live_batch(self._db, project_id, content_sha256, threshold, purpose)
            return live is not None

    def live_custodian_upload(self, project_id: str) -> UploadRecord | None:
        live = [u for u in self.uploads(project_id, "custodian") if u.path is not None]
        return live[-1] if live else None

    def delete_encodings(self, upload: UploadRecord, reason: str) -> bool:
        """Delete an upload's encodings file, keeping its metadata; audited. False if they
        were deleted already."""
        with self._transaction() as db:
            if not db.execute(
                "UPDATE uploads SET file=NULL WHERE upload_id=? AND file IS NOT NULL",
                (upload.upload_id,),
            ).rowcount:
                return False
            appended = db.execute(
                "SELECT file FROM custodian_updates WHERE upload_id=? AND file IS NOT NULL",
                (upload.upload_id,),
            ).fetchall()
            db.execute(
                "UPDATE custodian_updates SET file=NULL WHERE upload_id=?", (upload.upload_id,)
            )
            self._audit(
                db,
                "data_deleted",
                upload.project_id,
                "",
                {
                    "what": "encodings",
                    "upload_id": upload.upload_id,
                    "party": upload.party,
                    "reason": reason,
                },
            )
        if upload.path is not None:
            upload.path.unlink(missing_ok=True)
        for (name,) in appended:
            (self.encodings_dir / name).unlink(missing_ok=True)
        self.remove_index(upload.upload_id)
        return True

    # Runs

    def runs(self, project_id: str) -> list[RunRecord]:
        rows = self._read(
            "SELECT run_id, batch_id, state, threshold, message, approved, match_count, "
            "withheld_count, finished_at, results_deleted, (SELECT group_concat(party) FROM "
            "releases r WHERE r.run_id = runs.run_id), decision FROM runs WHERE project_id=? "
            "ORDER BY created_at",
            (project_id,),
        )
        return [_run_record(project_id, row) for row in rows]

    def run(self, project_id: str, run_id: str) -> RunRecord | None:
        return next((r for r in self.runs(project_id) if r.run_id == run_id), None)

    def unfinished_runs(self) -> list[tuple[str, str]]:
        """(project, run) of runs queued or running, e.g. when the server stopped; oldest first."""
        rows = self._read(
            "SELECT project_id, run_id FROM runs WHERE state IN (?, ?) ORDER BY created_at",
            (QUEUED, RUNNING),
        )
        return [(p, r) for p, r in rows]

    def start_run(self, project_id: str, run_id: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE runs SET state=?, message='' WHERE run_id=?", (RUNNING, run_id))
            threshold = db.execute(
                "SELECT threshold FROM runs WHERE run_id=?", (run_id,)
            ).fetchone()[0]
            self._audit(
                db, "run_started", project_id, "", {"run_id": run_id, "threshold": threshold}
            )

    def finish_run(
        self,
        project_id: str,
        run_id: str,
        decisions: Decisions,
        custodian: UploadRecord,
        version: int,
    ) -> None:
        """Store the run's decided pairs and mark it done, atomically; replaces earlier ones.
        The audit entry records which custodian records the run matched against (the upload
        and the version its updates had brought it to), how it decided, in aggregates only,
        and the keyed hash of the pairs (`matches_sha256`), by which they can be checked
        later."""
        probabilities = [None if np.isnan(p) else p for p in decisions.probabilities.tolist()]
        rows = zip(
            [run_id] * len(decisions.requester_rows),
            decisions.requester_rows.tolist(),
            decisions.custodian_rows.tolist(),
            decisions.similarities.tolist(),
            decisions.status.tolist(),
            probabilities,
            strict=True,
        )
        summary = decisions.summary()
        matches_sha256 = match_set_sha256(
            self.commitment_key,
            decisions.requester_rows,
            decisions.custodian_rows,
            decisions.status,
        )
        with self._transaction() as db:
            db.execute("DELETE FROM matches WHERE run_id=?", (run_id,))
            db.executemany("INSERT INTO matches VALUES (?, ?, ?, ?, ?, ?)", rows)
            db.execute(
                "UPDATE runs SET state=?, message='', match_count=?, withheld_count=?, "
                "decision=?, finished_at=? WHERE run_id=?",
                (
                    DONE,
                    summary.matches,
                    summary.withheld,
                    json.dumps(summary.to_dict()),
                    time.time(),
                    run_id,
                ),
            )
            details = {
                "run_id": run_id,
                "custodian_upload_id": custodian.upload_id,
                "custodian_version": version,
                **summary.to_dict(),
                "matches_sha256": matches_sha256,
            }
            self._audit(db, "run_finished", project_id, "", details)

    def fail_run(self, project_id: str, run_id: str, message: str) -> None:
        with self._transaction() as db:
            if db.execute(
                "UPDATE runs SET state=?, message=?, finished_at=? WHERE run_id=?",
                (FAILED, message, time.time(), run_id),
            ).rowcount:
                self._audit(db, "run_failed", project_id, "", {"run_id": run_id, "reason": message})

    def approve_run(self, project_id: str, run_id: str) -> AuditEntry:
        with self._transaction() as db:
            db.execute("UPDATE runs SET approved=1 WHERE run_id=?", (run_id,))
            return self._audit(db, "run_approved", project_id, "custodian", {"run_id": run_id})

    def matches(
        self, run_id: str, status: PairStatus = PairStatus.MATCH
    ) -> tuple[list[int], list[int]]:
        """(requester rows, custodian rows) of a run's pairs with this status: by default its
        matches (neither withheld nor merely possible)."""
        rows = self._read(
            "SELECT requester_row, custodian_row FROM matches WHERE run_id=? AND "
            "status=? ORDER BY requester_row, custodian_row",
            (run_id, int(status)),
        )
        return [r[0] for r in rows], [r[1] for r in rows]

    def record_release(
        self, project_id: str, run_id: str, party: str, details: dict[str, Any]
    ) -> AuditEntry:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO releases VALUES (?, ?, ?)", (run_id, party, time.time())
            )
            return self._audit(
                db, "release_fetched", project_id, party, {"run_id": run_id, **details}
            )

    def record_refusal(self, project_id: str, party: str, details: dict[str, Any]) -> None:
        with self._transaction() as db:
            self._audit(db, "request_refused", project_id, party, details)

    def delete_results(self, project_id: str, run_id: str, reason: str) -> bool:
        """Delete a run's matches, keeping its counts; audited. False if deleted already."""
        with self._transaction() as db:
            db.execute("DELETE FROM matches WHERE run_id=?", (run_id,))
            if not db.execute(
                "UPDATE runs SET results_deleted=1 WHERE run_id=? AND results_deleted=0", (run_id,)
            ).rowcount:
                return False
            self._audit(
                db,
                "data_deleted",
                project_id,
                "",
                {"what": "results", "run_id": run_id, "reason": reason},
            )
        return True

    def project_ids(self) -> list[str]:
        return [r[0] for r in self._read("SELECT project_id FROM projects ORDER BY created_at")]

    def run_state_counts(self) -> dict[str, int]:
        """How many runs are in each state, over all projects."""
        return dict(self._read("SELECT state, count(*) FROM runs GROUP BY state"))


def _run_record(project_id: str, row: tuple[Any, ...]) -> RunRecord:
    run_id, batch_id, state, threshold, message, approved, matches, withheld, finished = row[:9]
    deleted, fetched, decision = row[9:]
    return RunRecord(
        run_id,
        batch_id,
        project_id,
        state,
        threshold,
        message,
        bool(approved),
        matches,
        withheld,
        finished,
        bool(deleted),
        frozenset(fetched.split(",")) if fetched else frozenset(),
        DecisionSummary.from_dict(json.loads(decision)) if decision else None,
    )


def _remove_path(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
