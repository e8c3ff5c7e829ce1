"""The state the server acts on, checked against what the signed audit log committed to.

The tables are not signed; the audit log is. Each check recomputes from the tables what an
entry recorded when the state was made:
- a project's agreement hashes to its ID, which its `project_created` entry names;
- a custodian update's upload, version, appended and removed counts are its
  `custodian_updated` entry's;
- an upload's party, count, bit length and content hash are its `upload_committed` entry's,
  and the uploads and runs that entries record are there while their project is;
- a run's batch and threshold are those its batch's entry records (and the threshold its
  `run_started` entry too); its state
  follows its last run_started/finished/failed entry; it is approved iff it has a `run_approved`
  entry, its results are deleted iff a `data_deleted` entry says so, and the parties that fetched
  its release are those with a `release_fetched` entry;
- a done run's counts and decision are its `run_finished` entry's, and its stored pairs hash to
  the entry's `matches_sha256`;
- each release was of the kind the agreement grants the party, and the stored pairs give the rows
  its `release_fetched` entry hashed (`rows_sha256`).
Entries written before a field existed lack it; what they lack is not checked.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import defaultdict

from blindlink.agreement.model import Agreement, parse_agreement
from blindlink.agreement.policy import Pairs, released_rows
from blindlink.audit.chain import AuditEntry
from blindlink.audit.commitments import match_set_sha256, rows_sha256
from blindlink.errors import BlindlinkError

_MATCH, _POSSIBLE = 0, 2  # PairStatus values as the matches table stores them
_STATE_AFTER = {"run_started": ("running",), "run_finished": ("done",), "run_failed": ("failed",)}
_DECISION_KEYS = ("threshold", "rule", "matches", "withheld", "possible", "estimates")


def state_problems(
    conn: sqlite3.Connection, entries: list[AuditEntry], commitments: bytes | str
) -> list[str]:
    """Every disagreement between the tables and the audit entries, naming the project, upload
    or run. `commitments`: the key of the entries' keyed hashes, or why there is none (then a
    run whose entries hold such hashes is reported unchecked)."""
    by_run: dict[str, list[AuditEntry]] = defaultdict(list)
    for entry in entries:
        run_id = entry.details.get("run_id")
        if isinstance(run_id, str) and entry.kind != "upload_repeated":
            by_run[run_id].append(entry)
    agreements, problems = _project_problems(conn, entries)
    problems += _upload_problems(conn, entries) + _removed_rows(conn, entries)
    problems += _update_problems(conn, entries)
    runs = conn.cursor()
    runs.row_factory = sqlite3.Row
    runs.execute(
        "SELECT run_id, project_id, batch_id, state, threshold, approved, match_count, "
        "withheld_count, results_deleted, decision, (SELECT group_concat(party) FROM releases "
        "l WHERE l.run_id = r.run_id) AS fetched FROM runs r ORDER BY created_at"
    )
    for run in runs.fetchall():
        run_id, project_id = run["run_id"], run["project_id"]
        logged = [e for e in by_run[run_id] if e.project_id == project_id]
        reasons = _run_reasons(run, logged)
        if not run["results_deleted"]:
            reasons += _pair_reasons(conn, run_id, logged, agreements.get(project_id), commitments)
        problems += [f"run {run_id}: {reason}" for reason in reasons]
    return problems


def _project_problems(
    conn: sqlite3.Connection, entries: list[AuditEntry]
) -> tuple[dict[str, Agreement], list[str]]:
    """The projects' agreements that hash to their IDs, and problems with the others."""
    created = {e.project_id: e for e in entries if e.kind == "project_created"}
    agreements, problems = {}, []
    for project_id, raw in conn.execute("SELECT project_id, agreement FROM projects"):
        what = f"project {project_id}"
        entry = created.get(project_id)
        if entry is None or entry.details.get("agreement_sha256") != project_id:
            problems.append(f"{what}: no project_created audit entry vouches for it")
        if hashlib.sha256(raw).hexdigest() != project_id:
            problems.append(f"{what}: its stored agreement does not hash to its ID (altered)")
            continue
        try:
            agreements[project_id] = parse_agreement(raw)
        except BlindlinkError as exc:
            problems.append(f"{what}: its agreement no longer parses: {exc}")
    return agreements, problems


def _upload_problems(conn: sqlite3.Connection, entries: list[AuditEntry]) -> list[str]:
    committed = {e.details.get("upload_id"): e for e in entries if e.kind == "upload_committed"}
    problems = []
    rows = conn.execute(
        "SELECT upload_id, project_id, party, count, bit_length, content_sha256 FROM uploads"
    )
    for upload_id, project_id, party, count, bit_length, content in rows:
        entry = committed.get(upload_id)
        recorded = {
            "count": count,
            "bit_length": bit_length,
            "content_sha256": bytes(content).hex(),
        }
        if entry is None:
            problems.append(f"upload {upload_id}: no upload_committed audit entry records it")
        elif (entry.project_id, entry.party) != (project_id, party) or any(
            entry.details.get(key) != value for key, value in recorded.items()
        ):
            problems.append(
                f"upload {upload_id}: its project, party, count, bit length or content hash "
                "differ from its upload_committed audit entry (altered)"
            )
    return problems


def _update_problems(conn: sqlite3.Connection, entries: list[AuditEntry]) -> list[str]:
    """Custodian updates whose upload, version or counts differ from their `custodian_updated`
    entry (a database from before updates has none)."""
    logged = {e.details.get("update_id"): e for e in entries if e.kind == "custodian_updated"}
    try:
        rows = conn.execute(
            "SELECT update_id, upload_id, version, appended, length(removed_rows) / 8 "
            "FROM custodian_updates"
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    problems = []
    for update_id, upload_id, version, appended, removed in rows:
        entry = logged.get(update_id)
        recorded = {
            "upload_id": upload_id,
            "version": version,
            "appended": appended,
            "removed": removed,
        }
        if entry is None or any(entry.details.get(k) != v for k, v in recorded.items()):
            problems.append(
                f"custodian update {update_id}: no custodian_updated audit entry records its "
                "upload, version and counts (altered)"
            )
    return problems


def _removed_rows(conn: sqlite3.Connection, entries: list[AuditEntry]) -> list[str]:
    """Uploads and runs of live projects that the audit log records and the tables lack (only
    deleting a project removes them)."""
    live = {project for (project,) in conn.execute("SELECT project_id FROM projects")}
    uploads = {upload for (upload,) in conn.execute("SELECT upload_id FROM uploads")}
    runs = {run for (run,) in conn.execute("SELECT run_id FROM runs")}
    problems = []
    for entry in entries:
        if entry.kind != "upload_committed" or entry.project_id not in live:
            continue
        recorded = f"its upload_committed entry (seq {entry.seq}) records it"
        upload_id, run_id = entry.details.get("upload_id"), entry.details.get("run_id")
        if upload_id not in uploads:
            problems.append(f"upload {upload_id}: {recorded}; the uploads table lacks it")
        if run_id is not None and run_id not in runs:
            problems.append(f"run {run_id}: {recorded}; the runs table lacks it")
    return problems


def _run_reasons(run: sqlite3.Row, logged: list[AuditEntry]) -> list[str]:
    """What is wrong with a run's row, given its audit entries."""
    kinds = [e.kind for e in logged]
    reasons = [
        f"its batch is upload {run['batch_id']}, but its upload_committed entry records "
        f"upload {e.details.get('upload_id')}"
        for e in logged
        if e.kind == "upload_committed" and e.details.get("upload_id") != run["batch_id"]
    ]
    thresholds = {
        e.details["threshold"]
        for e in logged
        if e.kind in ("upload_committed", "run_started") and "threshold" in e.details
    }
    if thresholds - {run["threshold"]}:
        recorded = sorted(thresholds)
        reasons.append(f"threshold {run['threshold']}, but its audit entries record {recorded}")
    last = next((kind for kind in reversed(kinds) if kind in _STATE_AFTER), None)
    if run["state"] not in (_STATE_AFTER[last] if last else ("waiting", "queued")):
        after = f"its last entry is {last}" if last else "it has no run_started entry"
        reasons.append(f"state {run['state']}, but {after}")
    approved = "run_approved" in kinds
    if bool(run["approved"]) != approved:
        reasons.append(
            f"approved is {bool(run['approved'])}, but its audit log holds "
            f"{'a' if approved else 'no'} run_approved entry"
        )
    deleted = any(e.kind == "data_deleted" and e.details.get("what") == "results" for e in logged)
    if bool(run["results_deleted"]) != deleted:
        reasons.append(
            f"results_deleted is {bool(run['results_deleted'])}, but its audit log says otherwise"
        )
    parties = {e.party for e in logged if e.kind == "release_fetched"}
    fetched = run["fetched"]
    if set(fetched.split(",") if fetched else ()) != parties:
        reasons.append(f"fetched by {fetched or 'nobody'}, but released to {sorted(parties)}")
    finished = [e for e in logged if e.kind == "run_finished"]
    if run["state"] == "done" and finished and "matches" in finished[-1].details:
        recorded_decision = {key: finished[-1].details.get(key) for key in _DECISION_KEYS}
        stored = json.loads(run["decision"]) if run["decision"] else recorded_decision
        counts = (run["match_count"], run["withheld_count"])
        logged_counts = (recorded_decision["matches"], recorded_decision["withheld"])
        if stored != recorded_decision or counts != logged_counts:
            reasons.append("its counts or decision differ from its run_finished entry (altered)")
    return reasons


def _pair_reasons(
    conn: sqlite3.Connection,
    run_id: str,
    logged: list[AuditEntry],
    agreement: Agreement | None,
    commitments: bytes | str,
) -> list[str]:
    """Whether the stored pairs are those the run finished with, and give the rows each
    release hashed."""
    rows = conn.execute(
        "SELECT requester_row, custodian_row, status FROM matches WHERE run_id=? "
        "ORDER BY requester_row, custodian_row",
        (run_id,),
    ).fetchall()
    reasons = []
    finished = [e for e in logged if e.kind == "run_finished"]
    committed = finished[-1].details.get("matches_sha256") if finished else None
    hashed = committed is not None or any("rows_sha256" in e.details for e in logged)
    if isinstance(commitments, str) and hashed:
        reasons.append(f"its pairs and releases could not be checked: {commitments}")
    if (
        isinstance(commitments, bytes)
        and committed is not None
        and match_set_sha256(commitments, *_columns(rows, 3)) != committed
    ):
        reasons.append("its stored pairs do not hash to its run_finished entry's (altered)")
    if agreement is None:
        return reasons
    pairs: dict[int, Pairs] = {}
    for status in (_MATCH, _POSSIBLE):
        requester, custodian = _columns([r for r in rows if r[2] == status], 2)
        pairs[status] = (requester, custodian)
    for entry in logged:
        if entry.kind != "release_fetched" or entry.party not in agreement.release:
            continue
        granted = agreement.release[entry.party].value
        if entry.details.get("kind") != granted:
            reasons.append(
                f"released {entry.details.get('kind')} to the {entry.party} (seq {entry.seq}); "
                f"the agreement grants {granted}"
            )
        release_hash = entry.details.get("rows_sha256")
        if isinstance(commitments, bytes) and release_hash is not None:
            expected = released_rows(agreement, entry.party, pairs[_MATCH], pairs[_POSSIBLE])
            if rows_sha256(commitments, *expected) != release_hash:
                reasons.append(
                    f"the {entry.party}'s release (seq {entry.seq}) holds rows the stored "
                    "pairs do not give (altered)"
                )
    return reasons


def _columns(rows: list[tuple[int, ...]], count: int) -> list[list[int]]:
    """The first `count` columns of rows."""
    return [[row[i] for row in rows] for i in range(count)]
