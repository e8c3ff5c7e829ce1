"""The audit log: every state change on the server, hash-chained and signed by the server.

Each entry's `entry_hash` is the SHA-256 of the canonical JSON of its fields and the previous
entry's hash (`prev_hash`; GENESIS for the first), and its signature is the server's Ed25519
signature of the `entry_hash` text. An entry is appended inside the caller's transaction, so a
state change and its entry are committed together or not at all.

Each project's entries form a chain of their own as well: `project_seq` counts the project's
entries from 1 and `prev_project_hash` is the hash of the project's entry before (GENESIS for
its first), both covered by the hash and signature, so one project's entries are checkable
without the others'. Entries written before these links existed have neither field; a
project's first linked entry then counts on from the project's earlier entries.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindlink.canonical import canonical_json
from blindlink.errors import BlindlinkError
from blindlink.security.keys import sign

GENESIS = "0" * 64

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    project_id TEXT NOT NULL,
    party TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL,
    signature TEXT NOT NULL,
    project_seq INTEGER,  -- NULL in entries from before per-project links
    prev_project_hash TEXT
);
CREATE INDEX IF NOT EXISTS audit_by_project ON audit_log(project_id, seq);
"""

KINDS = frozenset(
    {
        "project_created",
        "upload_committed",
        "upload_repeated",
        "custodian_updated",
        "rows_erased",
        "run_started",
        "run_finished",
        "run_failed",
        "run_approved",
        "release_fetched",
        "data_deleted",
        "request_refused",
    }
)
PARTIES = frozenset({"requester", "custodian", ""})

_FIELD_TYPES: dict[str, type] = {
    "seq": int,
    "time": str,
    "kind": str,
    "project_id": str,
    "party": str,
    "details": dict,
    "prev_hash": str,
    "entry_hash": str,
    "signature": str,
}
# Fields of entries from before per-project links are absent, not null, in their JSON.
_LINK_FIELDS: dict[str, type] = {"project_seq": int, "prev_project_hash": str}
_NAMES = [*_FIELD_TYPES, *_LINK_FIELDS]  # the columns, in order
_COLUMNS = ", ".join(_NAMES)
_JSON_TYPE_NAMES = {int: "integer", str: "string", dict: "object"}


class AuditFormatError(BlindlinkError, ValueError):
    """An audit entry (an export line, a receipt, a stored row) is malformed."""


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: str
    kind: str
    project_id: str
    party: str
    details: dict[str, Any]
    prev_hash: str
    entry_hash: str
    signature: str
    project_seq: int | None = None  # None in entries from before per-project links
    prev_project_hash: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON object; also the form of a receipt."""
        names = [*_FIELD_TYPES, *(n for n in _LINK_FIELDS if getattr(self, n) is not None)]
        return {name: copy.deepcopy(getattr(self, name)) for name in names}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> AuditEntry:
        """Parse `to_json()` output strictly: every field present (the per-project link fields
        only in entries that have them), of its type, nothing else."""
        if not isinstance(document, dict):
            raise AuditFormatError("an audit entry must be a JSON object")
        missing = [name for name in _FIELD_TYPES if name not in document]
        if missing:
            raise AuditFormatError(f"audit entry lacks field(s): {', '.join(missing)}")
        unknown = sorted(set(document) - set(_FIELD_TYPES) - set(_LINK_FIELDS))
        if unknown:
            raise AuditFormatError(f"audit entry has unknown field(s): {', '.join(unknown)}")
        for name, value in document.items():
            expected = (_FIELD_TYPES | _LINK_FIELDS)[name]
            if not isinstance(value, expected) or isinstance(value, bool):
                raise AuditFormatError(
                    f"audit entry field '{name}' must be a JSON {_JSON_TYPE_NAMES[expected]}"
                )
        return cls(**copy.deepcopy(document))


def entry_hash(
    seq: int,
    time: str,
    kind: str,
    project_id: str,
    party: str,
    details: dict[str, Any],
    prev_hash: str,
    project_seq: int | None = None,
    prev_project_hash: str | None = None,
) -> str:
    """SHA-256 hex of the canonical JSON of an entry's fields and its predecessors' hashes; a
    per-project link field is left out where the entry has none."""
    document = {
        "seq": seq,
        "time": time,
        "kind": kind,
        "project_id": project_id,
        "party": party,
        "details": details,
        "prev_hash": prev_hash,
    }
    links = {"project_seq": project_seq, "prev_project_hash": prev_project_hash}
    document.update({name: value for name, value in links.items() if value is not None})
    return hashlib.sha256(canonical_json(document)).hexdigest()


def append_entry(
    conn: sqlite3.Connection,
    signing_key: Ed25519PrivateKey,
    kind: str,
    project_id: str,
    party: str,
    details: dict[str, Any],
    now: datetime | None = None,
) -> AuditEntry:
    """Build, sign and insert the next entry within the caller's open transaction.

    Never begins or commits: the entry is committed, or rolled back, with the state change the
    caller records in the same transaction. `party` is a role, or "" for the operator/unknown.
    """
    if not conn.in_transaction:
        raise RuntimeError("append_entry must run inside the caller's open transaction")
    if kind not in KINDS:
        raise ValueError(f"unknown audit entry kind {kind!r}")
    if party not in PARTIES:
        raise ValueError(f"audit party must be one of {sorted(PARTIES)}, not {party!r}")
    if not isinstance(details, dict):
        raise ValueError("audit details must be a dict")
    details = json.loads(canonical_json(details))  # exactly what is stored and read back
    seq, prev_hash = _next_link(conn)
    project_seq, prev_project_hash = _next_project_link(conn, project_id)
    time = audit_time_text(now or datetime.now(UTC))
    fields = (seq, time, kind, project_id, party, details, prev_hash)
    digest = entry_hash(*fields, project_seq, prev_project_hash)
    signature = sign(signing_key, digest.encode("ascii"))
    entry = AuditEntry(*fields, digest, signature, project_seq, prev_project_hash)
    conn.execute(
        f"INSERT INTO audit_log ({_COLUMNS}) VALUES ({', '.join('?' * len(_NAMES))})",
        _row_values(entry),
    )
    return entry


def add_project_links(conn: sqlite3.Connection) -> None:
    """Databases from before per-project links: add their columns (NULL in existing entries)."""
    columns = [row[1] for row in conn.execute("PRAGMA table_info(audit_log)")]
    if columns and "project_seq" not in columns:
        conn.execute("ALTER TABLE audit_log ADD COLUMN project_seq INTEGER")
        conn.execute("ALTER TABLE audit_log ADD COLUMN prev_project_hash TEXT")


def read_entries(conn: sqlite3.Connection, project_id: str | None = None) -> list[AuditEntry]:
    """All entries, or one project's, in seq order."""
    query = f"SELECT {_COLUMNS} FROM audit_log"
    params: tuple[str, ...] = ()
    if project_id is not None:
        query += " WHERE project_id=?"
        params = (project_id,)
    return [_entry_from_row(row) for row in conn.execute(query + " ORDER BY seq", params)]


def _next_link(conn: sqlite3.Connection) -> tuple[int, str]:
    """The seq and prev_hash of the entry to append."""
    last = conn.execute(
        "SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    return (last[0] + 1, last[1]) if last else (1, GENESIS)


def _next_project_link(conn: sqlite3.Connection, project_id: str) -> tuple[int, str]:
    """The project_seq and prev_project_hash of the project's entry to append."""
    last = conn.execute(
        "SELECT project_seq, entry_hash FROM audit_log WHERE project_id=? ORDER BY seq DESC "
        "LIMIT 1",
        (project_id,),
    ).fetchone()
    if last is None:
        return 1, GENESIS
    if last[0] is None:  # the project's entries so far have no links: count on from them
        (count,) = conn.execute(
            "SELECT count(*) FROM audit_log WHERE project_id=?", (project_id,)
        ).fetchone()
        return count + 1, last[1]
    return last[0] + 1, last[1]


def audit_time_text(moment: datetime) -> str:
    """An audit entry's or checkpoint's time: UTC, in microseconds, ending in Z."""
    if moment.tzinfo is None:
        raise ValueError("audit time must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _row_values(entry: AuditEntry) -> tuple[Any, ...]:
    return (
        entry.seq,
        entry.time,
        entry.kind,
        entry.project_id,
        entry.party,
        canonical_json(entry.details).decode(),
        entry.prev_hash,
        entry.entry_hash,
        entry.signature,
        entry.project_seq,
        entry.prev_project_hash,
    )


def _entry_from_row(row: tuple[Any, ...]) -> AuditEntry:
    document = {name: value for name, value in zip(_NAMES, row, strict=True) if value is not None}
    try:
        document["details"] = json.loads(document["details"])
    except (TypeError, json.JSONDecodeError):
        raise AuditFormatError(f"audit_log seq {row[0]}: details is not JSON") from None
    try:
        return AuditEntry.from_json(document)
    except AuditFormatError as exc:
        raise AuditFormatError(f"audit_log seq {row[0]}: {exc}") from None
