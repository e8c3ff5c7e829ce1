"""What a test server holds (database rows, files, audit entries), for checks that a refusal
changed nothing."""

from __future__ import annotations

import sqlite3

from blindlink.audit.chain import AuditEntry, read_entries
from blindlink.audit.checkpoint import CHECKPOINT_NAME
from blindlink.server.app import RunningServer


def snapshot(server: RunningServer) -> tuple[list[str], dict[str, bytes]]:
    """Every row of every table and every file under the data dir but the database and the audit
    checkpoint (which names the newest audit entries). The checkpoint's name also covers the
    file it is written through, which exists for a moment after any audited commit, such as a
    retention sweep's in the background."""
    db = sqlite3.connect(server.store.data_dir / "blindlink.db")
    rows = [line for line in db.iterdump() if line.startswith("INSERT")]
    db.close()
    files = {
        str(p.relative_to(server.store.data_dir)): p.read_bytes()
        for p in server.store.data_dir.rglob("*")
        if p.is_file()
        and not p.name.startswith("blindlink.db")
        and not p.name.startswith(CHECKPOINT_NAME)
    }
    return rows, files


def audit(server: RunningServer, project: str | None = None) -> list[AuditEntry]:
    """The audit log's entries (of one project, if given), read from the server's database."""
    db = sqlite3.connect(server.store.data_dir / "blindlink.db")
    try:
        return read_entries(db, project)
    finally:
        db.close()


def state(server: RunningServer) -> tuple[list[str], dict[str, bytes]]:
    """Every table row but the audit log's, and every file: what a refusal must not change."""
    rows, files = snapshot(server)
    return [r for r in rows if not r.startswith('INSERT INTO "audit_log"')], files


def state_changes(
    before: tuple[list[str], dict[str, bytes]], after: tuple[list[str], dict[str, bytes]]
) -> str:
    """What differs between two `state`s: rows gone and new, files gone, new and changed (by
    name), so that a failed comparison says what changed rather than dumping both."""
    rows = set(before[0]), set(after[0])
    files = before[1], after[1]
    changed = sorted(
        name for name in files[0].keys() & files[1].keys() if files[0][name] != files[1][name]
    )
    return (
        f"rows gone {sorted(rows[0] - rows[1])}, rows new {sorted(rows[1] - rows[0])}; "
        f"files gone {sorted(files[0].keys() - files[1].keys())}, "
        f"new {sorted(files[1].keys() - files[0].keys())}, changed {changed}"
    )


def assert_unchanged(
    before: tuple[list[str], dict[str, bytes]], after: tuple[list[str], dict[str, bytes]]
) -> None:
    """That nothing changed between two snapshots; if something did, which rows and files."""
    assert after == before, state_changes(before, after)
