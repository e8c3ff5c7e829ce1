"""The audit log's checkpoint: the server's signed statement of the newest entry of the log and
of each project, kept in a file outside the database.

Removing the newest entries leaves a valid chain; a checkpoint still names them. The server
rewrites the checkpoint after every commit that appends entries, so it may lag the database (a
crash between the two) but never lead it: every entry a checkpoint names must be in the log.
A copy kept elsewhere (or a party's receipt) also catches a checkpoint rolled back together
with the database.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindlink.audit.chain import GENESIS, AuditEntry, AuditFormatError, audit_time_text
from blindlink.canonical import canonical_json
from blindlink.security.keys import sign, verify_signature

CHECKPOINT_NAME = "audit-checkpoint.json"
_KIND = "blindlink audit checkpoint"


@dataclass(frozen=True)
class Head:
    """The newest entry of the log, or of one project: seq 0 and GENESIS while there is none."""

    seq: int
    entry_hash: str


EMPTY = Head(0, GENESIS)


@dataclass(frozen=True)
class Checkpoint:
    time: str
    head: Head
    projects: dict[str, Head]

    def document(self) -> dict[str, Any]:
        """What the signature covers."""
        return {
            "kind": _KIND,
            "time": self.time,
            "seq": self.head.seq,
            "entry_hash": self.head.entry_hash,
            "projects": {
                project: {"seq": head.seq, "entry_hash": head.entry_hash}
                for project, head in sorted(self.projects.items())
            },
        }

    def advanced(self, entries: list[AuditEntry], now: datetime) -> Checkpoint:
        """The checkpoint after appending `entries`."""
        projects = dict(self.projects)
        head = self.head
        for entry in entries:
            head = projects[entry.project_id] = Head(entry.seq, entry.entry_hash)
        return Checkpoint(audit_time_text(now), head, projects)


def database_heads(conn: sqlite3.Connection, now: datetime) -> Checkpoint:
    """The checkpoint of the log as the database holds it."""
    rows = conn.execute(
        "SELECT project_id, seq, entry_hash FROM audit_log WHERE seq IN "
        "(SELECT max(seq) FROM audit_log GROUP BY project_id) ORDER BY seq"
    ).fetchall()
    projects = {project: Head(seq, digest) for project, seq, digest in rows}
    head = Head(rows[-1][1], rows[-1][2]) if rows else EMPTY
    return Checkpoint(audit_time_text(now), head, projects)


def write_checkpoint(path: Path, key: Ed25519PrivateKey, checkpoint: Checkpoint) -> None:
    """Sign and replace the checkpoint file atomically (owner-only, synced to disk)."""
    document = checkpoint.document()
    document["signature"] = sign(key, canonical_json(checkpoint.document()))
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(canonical_json(document) + b"\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


def read_checkpoint(path: Path, server_public_key: str) -> Checkpoint:
    """Parse a checkpoint file and check the server's signature on it; AuditFormatError names
    what is wrong."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        signature = document.pop("signature")
        checkpoint = Checkpoint(
            document["time"],
            Head(document["seq"], document["entry_hash"]),
            {p: Head(h["seq"], h["entry_hash"]) for p, h in document["projects"].items()},
        )
        genuine = checkpoint.document() == document and verify_signature(
            server_public_key, canonical_json(document), signature
        )
    except FileNotFoundError:
        raise AuditFormatError(f"{path}: no audit checkpoint") from None
    except (ValueError, TypeError, KeyError, AttributeError):
        raise AuditFormatError(f"{path}: not an audit checkpoint") from None
    if not genuine:
        raise AuditFormatError(f"{path}: the audit checkpoint is not signed by the server key")
    return checkpoint


def checkpoint_problems(
    checkpoint: Checkpoint,
    entry_hash_at: Callable[[int], str | None],
    project_id: str | None = None,
) -> list[str]:
    """Entries the checkpoint names that the log lacks or holds changed: the newest of the
    whole log, or with `project_id` (a partial log) the newest of that project.
    `entry_hash_at(seq)` is the log's entry hash at seq, or None if it has no such entry."""
    if project_id is None:
        what, head = "the log's", checkpoint.head
    else:
        what, head = f"project {project_id}'s", checkpoint.projects.get(project_id, EMPTY)
    if head.seq == 0:
        return []
    found = entry_hash_at(head.seq)
    named = f"the checkpoint of {checkpoint.time} names seq {head.seq} as {what} newest entry"
    if found is None:
        return [f"{named}; the log lacks it (entries were removed)"]
    if found != head.entry_hash:
        return [f"{named}; the log's entry at seq {head.seq} is another (replaced)"]
    return []
