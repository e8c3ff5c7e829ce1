"""Checking a data directory: the database's integrity and foreign keys, every encodings file
(uploads' and those custodian updates appended) against its recorded count, bit length and
content hash, with the records of the rows the custodian removed erased (erasure.py), files
without rows and rows without files, the stored matches against the runs' counts, the audit
log's hash chain and signatures against the server's public key, its newest entries against
the signed checkpoint, and the tables against what the audit entries committed to
(`audited_state`).

The database is read in one read-only transaction, so the check is safe while the server runs;
files written or deleted during the check may then show as problems (run it again to confirm).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blindlink.audit.chain import AuditFormatError, read_entries
from blindlink.audit.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    checkpoint_problems,
    read_checkpoint,
)
from blindlink.audit.commitments import commitment_key
from blindlink.audit.verify import verify_entries
from blindlink.errors import BlindlinkError, EncodingsFileError
from blindlink.security.keys import load_private_key
from blindlink.store.audited_state import state_problems
from blindlink.store.directory import ENCODINGS_DIR, INCOMING_DIR, SIGNING_KEY_NAME
from blindlink.store.erasure import (
    StoredFile,
    committed_removals,
    payload_hashes,
    still_held,
    stored_files,
)
from blindlink.store.reports import open_read_only

_FILE_NAME = re.compile(r"[0-9a-f]{32}\.bin")


@dataclass(frozen=True)
class IntegrityReport:
    problems: list[str]
    projects: int
    files: int  # encodings files checked
    runs: int
    audit_entries: int

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_data_dir(
    data_dir: Path, server_public_key: str, in_use: bool, checkpoint_path: Path | None = None
) -> IntegrityReport:
    """Every problem found in `data_dir`. `in_use`: a server owns the directory now, so files
    in incoming/ are uploads in progress, not leftovers. `checkpoint_path`: the audit checkpoint
    to check the log against (default: the one in `data_dir`)."""
    data_dir = Path(data_dir)
    # Read before the snapshot: the server writes a checkpoint after committing what it names.
    checkpoint = _checkpoint(checkpoint_path or data_dir / CHECKPOINT_NAME, server_public_key)
    commitments = _commitment_key(data_dir)
    conn = open_read_only(data_dir)
    try:
        conn.execute("BEGIN")  # one consistent snapshot for every query below
        problems = _database_problems(conn)
        file_problems, files = _file_problems(conn, data_dir, in_use)
        audit_problems, entries = _audit_problems(conn, server_public_key, checkpoint, commitments)
        (projects,) = conn.execute("SELECT count(*) FROM projects").fetchone()
        (runs,) = conn.execute("SELECT count(*) FROM runs").fetchone()
    finally:
        conn.close()
    problems += file_problems + audit_problems
    return IntegrityReport(problems, projects, files, runs, entries)


def _database_problems(conn: sqlite3.Connection) -> list[str]:
    problems = [
        f"database: {line}" for (line,) in conn.execute("PRAGMA quick_check") if line != "ok"
    ]
    problems += [
        f"database: {table} row {rowid} refers to a missing row of {parent}"
        for table, rowid, parent, _ in conn.execute("PRAGMA foreign_key_check")
    ]
    problems += [
        f"run {run_id}: its batch {batch_id} is no requester upload of its project"
        for run_id, batch_id in conn.execute(
            "SELECT r.run_id, r.batch_id FROM runs r LEFT JOIN uploads u ON "
            "u.upload_id = r.batch_id AND u.project_id = r.project_id AND "
            "u.party = 'requester' WHERE u.upload_id IS NULL"
        )
    ]
    rows = conn.execute(
        "SELECT run_id, match_count, withheld_count, "
        "coalesce(json_extract(decision, '$.possible'), 0), "
        "(SELECT count(*) FROM matches m WHERE m.run_id = r.run_id AND status = 0), "
        "(SELECT count(*) FROM matches m WHERE m.run_id = r.run_id AND status = 1), "
        "(SELECT count(*) FROM matches m WHERE m.run_id = r.run_id AND status = 2) "
        "FROM runs r WHERE state = 'done' AND results_deleted = 0"
    )
    for run_id, *counts in rows:
        recorded, held = counts[:3], counts[3:]
        if recorded != held:
            problems.append(
                f"run {run_id}: records {recorded[0]} released, {recorded[1]} withheld and "
                f"{recorded[2]} possible matches, but holds {held[0]}, {held[1]} and {held[2]}"
            )
    return problems


def _file_problems(conn: sqlite3.Connection, data_dir: Path, in_use: bool) -> tuple[list[str], int]:
    problems = []
    recorded = conn.execute(
        "SELECT upload_id, file, count, bit_length, content_sha256 FROM uploads "
        "WHERE file IS NOT NULL"
    ).fetchall()
    for upload_id, name, count, bit_length, content_sha256 in recorded:
        if not _FILE_NAME.fullmatch(name):
            problems.append(f"upload {upload_id}: recorded file name {name!r} is not valid")
            continue
        files, removed = _stored(conn, data_dir, upload_id, name, count, content_sha256)
        for stored in files:
            problem = _encodings_problem(stored, bit_length, stored.rows_in(removed))
            if problem:
                problems.append(f"upload {upload_id}: {problem}")
    names = {name for _, name, *_ in recorded} | _appended_files(conn)
    problems += [
        f"{ENCODINGS_DIR}/{path.name}: no upload records this file (orphan)"
        for path in sorted((data_dir / ENCODINGS_DIR).iterdir())
        if path.name not in names
    ]
    if not in_use:
        problems += [
            f"{INCOMING_DIR}/{path.name}: leftover of an interrupted upload (removed at the "
            "server's next start)"
            for path in sorted((data_dir / INCOMING_DIR).iterdir())
        ]
    return problems, len(recorded)


def _appended_files(conn: sqlite3.Connection) -> set[str]:
    """The files of records that custodian updates appended (none before updates existed)."""
    try:
        rows = conn.execute("SELECT file FROM custodian_updates WHERE file IS NOT NULL")
    except sqlite3.OperationalError:
        return set()
    return {name for (name,) in rows}


def _stored(
    conn: sqlite3.Connection,
    data_dir: Path,
    upload_id: str,
    name: str,
    count: int,
    content_sha256: bytes,
) -> tuple[list[StoredFile], np.ndarray]:
    """An upload's stored files (its own, then those its custodian updates appended) and the
    rows its updates removed."""
    try:
        files = stored_files(conn, data_dir / ENCODINGS_DIR, upload_id)
        return files, committed_removals(conn, upload_id)
    except sqlite3.OperationalError:  # a database from before erasures, not opened since
        path = data_dir / ENCODINGS_DIR / name
        return [StoredFile(path, 0, count, content_sha256, np.empty(0, np.int64))], np.empty(0)


def _encodings_problem(stored: StoredFile, bit_length: int, removed: np.ndarray) -> str | None:
    """What is wrong with one committed encodings file, if anything: its payload, with the
    records its recorded hash has erased read as zeros, must have that hash, and the records
    of rows the custodian removed (`removed`) must be zeros, with that hash in the header."""
    path = stored.path
    if not path.is_file():
        return f"encodings file {path.name} is missing"
    try:
        header, (digest,) = payload_hashes(path, stored.applied)
    except EncodingsFileError as exc:
        return str(exc)
    if (header.count, header.bit_length) != (stored.records, bit_length):
        return (
            f"file header says {header.count} encodings of {header.bit_length} bits; the "
            f"database records {stored.records} of {bit_length}"
        )
    if digest != stored.sha256:
        return "content hash does not match the recorded content_sha256 (corrupt or altered)"
    if len(removed) and (still_held(path, removed) or header.content_sha256 != stored.sha256):
        return (
            f"{path.name} still holds records of the {len(removed)} rows the custodian removed "
            "from it: not yet erased (the server erases them when it starts)"
        )
    if header.content_sha256 != stored.sha256:
        return "content hash does not match the recorded content_sha256 (corrupt or altered)"
    return None


def _checkpoint(path: Path, server_public_key: str) -> Checkpoint | AuditFormatError:
    try:
        return read_checkpoint(path, server_public_key)
    except AuditFormatError as exc:
        return exc


def _commitment_key(data_dir: Path) -> bytes | str:
    """The key of the audit entries' commitments (from the server's signing key), or why it
    cannot be had."""
    try:
        return commitment_key(load_private_key(data_dir / f"{SIGNING_KEY_NAME}.key"))
    except BlindlinkError as exc:
        return str(exc)


def _audit_problems(
    conn: sqlite3.Connection,
    server_public_key: str,
    checkpoint: Checkpoint | AuditFormatError,
    commitments: bytes | str,
) -> tuple[list[str], int]:
    try:
        entries = read_entries(conn)
    except AuditFormatError as exc:
        return [f"audit log: {exc}"], 0
    report = verify_entries(entries, server_public_key)
    problems = [f"audit log seq {p.seq}: {p.reason}" for p in report.problems]
    if isinstance(checkpoint, Checkpoint):
        hashes = {entry.seq: entry.entry_hash for entry in entries}
        problems += [f"audit checkpoint: {p}" for p in checkpoint_problems(checkpoint, hashes.get)]
    elif any(entry.project_seq is not None for entry in entries):
        # Logs from before checkpoints have no linked entries and no checkpoint yet.
        problems.append(f"audit checkpoint: {checkpoint}")
    problems += state_problems(conn, entries, commitments)
    return problems, len(entries)
