"""Audit log exports: JSON Lines, one entry (`AuditEntry.to_json()`) per line."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from blindlink.audit.chain import AuditEntry, AuditFormatError, read_entries
from blindlink.canonical import canonical_json
from blindlink.errors import InputError


def export_log(db_path: Path, out: Path, project_id: str | None = None) -> int:
    """Write the log (or one project's entries) from the database, opened read-only, to `out`.

    Returns the number of entries written."""
    entries = _read_database(Path(db_path), project_id)
    lines = "".join(canonical_json(entry.to_json()).decode() + "\n" for entry in entries)
    Path(out).write_text(lines, encoding="utf-8")
    return len(entries)


def read_export(path: Path) -> list[AuditEntry]:
    """Parse an export, naming the line of the first malformed entry."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(str(path), "file not found") from None
    except UnicodeDecodeError:
        raise InputError(str(path), "not UTF-8 text") from None
    # Split on "\n" only: entries may hold other line separators (U+2028, ...) verbatim.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [_parse_line(path, number, line) for number, line in enumerate(lines, 1)]


def _parse_line(path: Path, number: int, line: str) -> AuditEntry:
    try:
        return AuditEntry.from_json(json.loads(line))
    except json.JSONDecodeError as exc:
        raise InputError(str(path), f"not JSON ({exc.msg})", line=number) from None
    except AuditFormatError as exc:
        raise InputError(str(path), str(exc), line=number) from None


def _read_database(db_path: Path, project_id: str | None) -> list[AuditEntry]:
    if not db_path.is_file():
        raise InputError(str(db_path), "database not found")
    try:
        with closing(sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            return read_entries(conn, project_id)
    except sqlite3.Error as exc:
        raise InputError(str(db_path), f"cannot read the audit log: {exc}") from None
