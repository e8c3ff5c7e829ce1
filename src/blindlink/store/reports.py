"""Read-only views of a data directory for the operator: project and run metadata.

They read the database through a read-only connection, so they are safe while the server runs,
and they never read encodings, matches or row references; the key group report reads the
blocking keys stored after the encodings, and reports how many records share a key, never a key.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from blindlink.agreement.model import parse_agreement
from blindlink.encoding.encodings_file import read_records
from blindlink.errors import BlindlinkError
from blindlink.index.custodian import CustodianIndex
from blindlink.index.layout import IndexUnusable, index_name
from blindlink.matching.blocking import KeyLoad, custodian_key_counts, key_loads, split_records
from blindlink.store.directory import DATABASE_NAME, ENCODINGS_DIR, INDEX_DIR


def open_read_only(data_dir: Path) -> sqlite3.Connection:
    """A read-only connection to the data directory's database."""
    path = Path(data_dir) / DATABASE_NAME
    if not path.is_file():
        raise BlindlinkError(f"{data_dir}: no {DATABASE_NAME}; is this a server's data directory?")
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def utc_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ProjectSummary:
    project_id: str
    reference: str
    created: str
    uploads: dict[str, int]  # per party: how many uploads
    records: dict[str, int]  # per party: how many encodings in them
    stored_encodings: int  # uploads whose encodings are still on the server
    runs: dict[str, int]  # per state

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def project_summaries(conn: sqlite3.Connection) -> list[ProjectSummary]:
    """Every project, oldest first."""
    return [
        _summary(conn, project_id, agreement, created)
        for project_id, agreement, created in conn.execute(
            "SELECT project_id, agreement, created_at FROM projects ORDER BY created_at"
        )
    ]


def _summary(
    conn: sqlite3.Connection, project_id: str, agreement: bytes, created: float
) -> ProjectSummary:
    uploads, records = {"requester": 0, "custodian": 0}, {"requester": 0, "custodian": 0}
    for party, count, total in conn.execute(
        "SELECT party, count(*), sum(count) FROM uploads WHERE project_id=? GROUP BY party",
        (project_id,),
    ):
        uploads[party], records[party] = count, total
    (stored,) = conn.execute(
        "SELECT count(*) FROM uploads WHERE project_id=? AND file IS NOT NULL", (project_id,)
    ).fetchone()
    runs = dict(
        conn.execute(
            "SELECT state, count(*) FROM runs WHERE project_id=? GROUP BY state ORDER BY state",
            (project_id,),
        ).fetchall()
    )
    return ProjectSummary(
        project_id,
        _reference(agreement),
        utc_text(created),
        uploads,
        records,
        stored,
        runs,
    )


def _reference(agreement: bytes) -> str:
    try:
        return str(json.loads(agreement)["reference"])
    except (ValueError, KeyError, TypeError):
        return "(unreadable agreement)"


@dataclass(frozen=True)
class RunReport:
    project_id: str
    run_id: str
    state: str
    threshold: float
    message: str
    approved: bool
    match_count: int
    withheld_count: int
    decision: dict[str, Any] | None  # how the run decided (DecisionSummary), once done
    created: str
    finished: str
    results_deleted: bool
    fetched_by: list[str]
    events: list[dict[str, Any]]  # the run's audit entries: seq, time, kind, party, details

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_report(conn: sqlite3.Connection, project_id: str, run_id: str) -> RunReport | None:
    """One run's state, counts and audit entries; None if there is no such run."""
    row = conn.execute(
        "SELECT batch_id, state, threshold, message, approved, match_count, withheld_count, "
        "created_at, finished_at, results_deleted, decision FROM runs WHERE project_id=? AND "
        "run_id=?",
        (project_id, run_id),
    ).fetchone()
    if row is None:
        return None
    batch_id, state, threshold, message, approved, matches, withheld, created, finished = row[:9]
    deleted, decision = row[9:]
    fetched = [
        party
        for (party,) in conn.execute(
            "SELECT party FROM releases WHERE run_id=? ORDER BY party", (run_id,)
        )
    ]
    events = [
        {"seq": seq, "time": time, "kind": kind, "party": party, "details": json.loads(details)}
        for seq, time, kind, party, details in conn.execute(
            "SELECT seq, time, kind, party, details FROM audit_log WHERE project_id=? AND "
            "(json_extract(details, '$.run_id')=? OR json_extract(details, '$.upload_id')=?) "
            "ORDER BY seq",
            (project_id, run_id, batch_id),
        )
    ]
    return RunReport(
        project_id,
        run_id,
        state,
        threshold,
        message,
        bool(approved),
        matches,
        withheld,
        json.loads(decision) if decision else None,
        utc_text(created),
        utc_text(finished),
        bool(deleted),
        fetched,
        events,
    )


@dataclass(frozen=True)
class KeyGroupReport:
    """A run's blocking key groups: its batch against the custodian's stored encodings."""

    run_id: str
    state: str
    loads: list[KeyLoad] | None  # None once the batch's or the custodian's keys are deleted

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def key_group_reports(
    conn: sqlite3.Connection, data_dir: Path, project_id: str, top: int = 3
) -> list[KeyGroupReport]:
    """Per run of a project with blocking keys, oldest first, each key's comparisons and `top`
    largest groups. Runs are measured against the custodian's encodings as stored now."""
    row = conn.execute("SELECT agreement FROM projects WHERE project_id=?", (project_id,))
    agreement = row.fetchone()
    if agreement is None:
        raise BlindlinkError(f"{data_dir}: no project {project_id}")
    blocking = parse_agreement(agreement[0]).blocking_keys
    if blocking is None:
        raise BlindlinkError(f"project {project_id} does not block on keys")
    encodings = Path(data_dir) / ENCODINGS_DIR

    def keys(name: str | None) -> np.ndarray | None:
        if name is None:
            return None
        return split_records(read_records(encodings / name), len(blocking.keys))[1]

    live = conn.execute(
        "SELECT upload_id, file, count, content_sha256 FROM uploads WHERE project_id=? AND "
        "party='custodian' AND file IS NOT NULL ORDER BY committed_at DESC LIMIT 1",
        (project_id,),
    ).fetchone()
    custodian = (
        _custodian_counts(conn, Path(data_dir), live, len(blocking.keys), keys) if live else None
    )
    reports = []
    for run_id, state, name in conn.execute(
        "SELECT run_id, state, file FROM runs JOIN uploads ON upload_id=batch_id "
        "WHERE runs.project_id=? ORDER BY created_at",
        (project_id,),
    ).fetchall():
        requester = keys(name)
        loads = (
            None
            if requester is None or custodian is None
            else key_loads(blocking, requester, custodian(requester), top)
        )
        reports.append(KeyGroupReport(run_id, state, loads))
    return reports


def _custodian_counts(
    conn: sqlite3.Connection,
    data_dir: Path,
    live: tuple[str, str, int, bytes],
    key_count: int,
    keys: Callable[[str], np.ndarray | None],
) -> Callable[[np.ndarray], np.ndarray]:
    """Per batch (its keys), the custodian's counts of its key values
    (blocking.custodian_key_counts): from the custodian's standing index, its postings, as in
    the run; without a usable index, counted among all the custodian's records, from the
    encodings file (`live`: the custodian's upload ID, file name, records and content hash)."""
    upload_id, name, count, content_sha256 = live
    version, appended = _custodian_version(conn, upload_id)
    try:
        index = CustodianIndex(data_dir / INDEX_DIR / index_name(upload_id, version))
        usable = index.manifest.is_of(
            upload_id, content_sha256, count + appended, key_count, version
        )
    except IndexUnusable:
        usable = False
    if usable:
        return lambda batch: index.look_up(batch)[1]
    if version:
        raise BlindlinkError(
            f"project's custodian encodings were updated, and their index (version {version}) "
            "is missing: start the server, which rebuilds it at the project's next run"
        )
    everyone = keys(name)
    assert everyone is not None
    return lambda batch: custodian_key_counts(batch, everyone)


def _custodian_version(conn: sqlite3.Connection, upload_id: str) -> tuple[int, int]:
    """The custodian updates of an upload: how many, and the records they appended (none in a
    database from before updates)."""
    try:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(appended), 0) FROM custodian_updates WHERE upload_id=?",
            (upload_id,),
        ).fetchone()
    except sqlite3.OperationalError:
        return 0, 0
    return int(row[0]), int(row[1])
