"""The audit log: a real SQLite chain verifies, and each kind of tampering by an operator with
database access is named at the entry it affects: in the whole log, in one project's entries
(a partial export) and, for the newest entries, against the signed checkpoint."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindlink.audit.chain import (
    GENESIS,
    SCHEMA_SQL,
    AuditEntry,
    AuditFormatError,
    append_entry,
    entry_hash,
    read_entries,
)
from blindlink.audit.checkpoint import (
    CHECKPOINT_NAME,
    checkpoint_problems,
    database_heads,
    read_checkpoint,
    write_checkpoint,
)
from blindlink.audit.export import export_log, read_export
from blindlink.audit.verify import (
    Problem,
    check_receipts_in_log,
    verify_entries,
    verify_receipt,
)
from blindlink.canonical import canonical_json
from blindlink.cli.audit_commands import add_audit_commands
from blindlink.errors import BlindlinkError, InputError
from blindlink.security.keys import public_key_text, sign, verify_signature
from blindlink.store.integrity import verify_data_dir
from blindlink.store.sqlite import Store

SERVER_KEY = Ed25519PrivateKey.generate()
SERVER_PUB = public_key_text(SERVER_KEY)
START = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
PROJECT_A, PROJECT_B = "a" * 64, "b" * 64
EVENTS = [
    ("project_created", PROJECT_A, "requester", {"reference": "DSA-2026-017"}),
    ("upload_committed", PROJECT_A, "requester", {"count": 1000, "bit_length": 1024}),
    ("project_created", PROJECT_B, "custodian", {"reference": "other"}),
    ("upload_committed", PROJECT_A, "custodian", {"count": 900, "bit_length": 1024}),
    ("run_started", PROJECT_A, "", {}),
    ("run_finished", PROJECT_A, "", {"matches": 480}),
    ("release_fetched", PROJECT_A, "requester", {"release": "own_rows", "rows": 480}),
    ("request_refused", PROJECT_B, "", {"method": "GetRelease", "reason": "no run"}),
    ("release_fetched", PROJECT_A, "custodian", {"release": "count"}),
    ("data_deleted", PROJECT_A, "requester", {"files": 2}),
]
EDITED = "entry_hash does not match the entry's fields (edited)"
BAD_SIGNATURE = "signature does not match the entry (edited, or signed by another key)"
NO_ENTRIES_BEFORE_3 = "first entry has seq 3; a full log starts at seq 1 (entries 1-2 are missing)"


def unlinked(before: int) -> str:
    return (
        f"prev_hash does not match entry seq {before} "
        "(an entry was removed, inserted or reordered before it)"
    )


@dataclass(frozen=True)
class Log:
    path: Path
    receipts: list[AuditEntry]  # what append_entry returned, as handed to the parties


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Log:
    """A server-like database (WAL, one transaction per event) holding the 10 EVENTS."""
    path = tmp_path_factory.mktemp("pristine") / "blindlink.db"
    receipts = []
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA_SQL)
        for minute, (kind, project, party, details) in enumerate(EVENTS):
            conn.execute("BEGIN IMMEDIATE")
            now = START + timedelta(minutes=minute)
            receipts.append(append_entry(conn, SERVER_KEY, kind, project, party, details, now))
            conn.execute("COMMIT")
        checkpoint = database_heads(conn, START + timedelta(hours=1))
    assert not path.with_name("blindlink.db-wal").exists()  # the file alone is the database
    write_checkpoint(path.with_name(CHECKPOINT_NAME), SERVER_KEY, checkpoint)
    return Log(path, receipts)


@pytest.fixture
def db(pristine: Log, tmp_path: Path) -> Path:
    """A copy of the pristine database file and its checkpoint, for one test to tamper with."""
    data_dir = tmp_path / "server-data"
    data_dir.mkdir()
    shutil.copy(pristine.path.with_name(CHECKPOINT_NAME), data_dir)
    return Path(shutil.copy(pristine.path, data_dir / "blindlink.db"))


def tamper(db: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    """What a malicious operator does: SQL straight into the server's database."""
    with closing(sqlite3.connect(db)) as conn:
        for sql, params in statements:
            conn.execute(sql, params)
        conn.commit()


def exported(db: Path, project: str | None = None) -> list[AuditEntry]:
    out = db.parent.parent / "audit.jsonl"
    export_log(db, out, project)
    return read_export(out)


def verified(db: Path) -> list[Problem]:
    return verify_entries(exported(db), SERVER_PUB).problems


def forged(seq: int, prev_hash: str, key: Ed25519PrivateKey) -> AuditEntry:
    """A well-formed entry with a correct hash, signed by `key`."""
    fields = (seq, "2026-05-01T10:00:00.000000Z", "run_approved", PROJECT_A, "", {}, prev_hash)
    digest = entry_hash(*fields)
    return AuditEntry(*fields, digest, sign(key, digest.encode("ascii")))


def test_real_database_chain_verifies(db: Path, pristine: Log) -> None:
    entries = exported(db)
    assert entries == pristine.receipts
    assert [e.seq for e in entries] == list(range(1, 11))
    assert entries[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.entry_hash for a, b in zip(entries, entries[1:], strict=False))
    assert entries[1].time == "2026-05-01T09:01:00.000000Z"
    report = verify_entries(entries, SERVER_PUB)
    assert report.ok and report.entries == 10 and report.problems == []


def test_project_export_verifies_as_partial_log(db: Path) -> None:
    entries = exported(db, PROJECT_B)
    assert [e.seq for e in entries] == [3, 8]
    assert verify_entries(entries, SERVER_PUB, partial=True).ok
    assert verify_entries(entries, SERVER_PUB).problems == [
        Problem(
            0, 3, "first entry has seq 3; a full log starts at seq 1 (entries 1-2 are missing)"
        ),
        Problem(1, 8, "seq 8 follows seq 3 (entries 4-7 are missing)"),
        Problem(1, 8, unlinked(3)),
    ]


def test_edited_details_named_at_that_entry(db: Path) -> None:
    tamper(db, ("UPDATE audit_log SET details=? WHERE seq=6", ('{"matches":999}',)))
    assert verified(db) == [Problem(5, 6, EDITED)]


def test_edited_details_with_recomputed_hash_fails_signature(db: Path, pristine: Log) -> None:
    original = pristine.receipts[2]
    details = {"reference": "rewritten"}
    digest = entry_hash(
        3,
        original.time,
        original.kind,
        original.project_id,
        "",
        details,
        original.prev_hash,
        original.project_seq,
        original.prev_project_hash,
    )
    tamper(
        db,
        (
            "UPDATE audit_log SET details=?, party='', entry_hash=? WHERE seq=3",
            (json.dumps(details), digest),
        ),
    )
    assert verified(db) == [Problem(2, 3, BAD_SIGNATURE)]


def test_entry_hash_and_signature_cover_exactly_the_fields(pristine: Log) -> None:
    entry = pristine.receipts[6]
    fields = {k: v for k, v in entry.to_json().items() if k not in ("entry_hash", "signature")}
    assert entry.entry_hash == hashlib.sha256(canonical_json(fields)).hexdigest()
    assert verify_signature(SERVER_PUB, entry.entry_hash.encode("ascii"), entry.signature)


def test_edited_prev_hash_named_at_that_entry(db: Path) -> None:
    tamper(db, ("UPDATE audit_log SET prev_hash=? WHERE seq=5", (GENESIS,)))
    assert verified(db) == [Problem(4, 5, unlinked(4)), Problem(4, 5, EDITED)]


def test_deleted_middle_entry_named_at_its_successor(db: Path) -> None:
    tamper(db, ("DELETE FROM audit_log WHERE seq=5", ()))
    assert verified(db) == [
        Problem(4, 6, "seq 6 follows seq 4 (entry 5 is missing)"),
        Problem(4, 6, unlinked(4)),
    ]


def test_deleted_first_entries_named(db: Path) -> None:
    tamper(db, ("DELETE FROM audit_log WHERE seq<=2", ()))
    assert verified(db) == [Problem(0, 3, NO_ENTRIES_BEFORE_3)]


def test_deleted_last_entry_caught_only_by_its_receipt(db: Path, pristine: Log) -> None:
    tamper(db, ("DELETE FROM audit_log WHERE seq=10", ()))
    entries = exported(db)
    assert verify_entries(entries, SERVER_PUB).ok  # a truncated log is a valid log
    receipts = [r.to_json() for r in pristine.receipts]
    assert check_receipts_in_log(receipts[:9], entries) == []
    assert check_receipts_in_log(receipts, entries) == [
        "receipt for seq 10 (data_deleted): no such entry in the log (removed)"
    ]


def test_receipt_names_edited_log_entry(db: Path, pristine: Log) -> None:
    tamper(db, ("UPDATE audit_log SET details='{}', party='' WHERE seq=7", ()))
    receipts = [r.to_json() for r in pristine.receipts]
    assert check_receipts_in_log(receipts, exported(db)) == [
        "receipt for seq 7 (release_fetched): the log's entry differs in party, details"
    ]


def test_swapped_entries_named_as_reordered(db: Path) -> None:
    tamper(
        db,
        ("UPDATE audit_log SET seq=0 WHERE seq=4", ()),
        ("UPDATE audit_log SET seq=4 WHERE seq=6", ()),
        ("UPDATE audit_log SET seq=6 WHERE seq=0", ()),
    )
    assert verified(db) == [
        Problem(3, 4, "prev_hash links to seq 5, not to seq 3 before it (reordered)"),
        Problem(3, 4, EDITED),
        Problem(5, 6, "prev_hash links to seq 3, not to seq 5 before it (reordered)"),
        Problem(5, 6, EDITED),
    ]


def test_forged_entry_with_fresh_key_named(db: Path, pristine: Log) -> None:
    fake = forged(11, pristine.receipts[-1].entry_hash, Ed25519PrivateKey.generate())
    columns = ", ".join(fake.to_json())
    values = [json.dumps(v) if isinstance(v, dict) else v for v in fake.to_json().values()]
    tamper(db, (f"INSERT INTO audit_log ({columns}) VALUES ({', '.join('?' * 9)})", tuple(values)))
    assert verified(db) == [Problem(10, 11, BAD_SIGNATURE)]


def test_forged_line_inserted_in_export_named_as_inserted(pristine: Log) -> None:
    fake = forged(6, pristine.receipts[4].entry_hash, Ed25519PrivateKey.generate())
    entries = [*pristine.receipts[:5], fake, *pristine.receipts[5:]]
    assert verify_entries(entries, SERVER_PUB).problems == [
        Problem(5, 6, BAD_SIGNATURE),
        Problem(5, 6, "not part of the chain: seq 6 links past it to seq 5 (inserted)"),
    ]


def test_reordered_export_lines_named(pristine: Log) -> None:
    entries = list(pristine.receipts)
    entries[4], entries[5] = entries[5], entries[4]
    assert verify_entries(entries, SERVER_PUB).problems == [
        Problem(4, 6, "seq 6 follows seq 4 (reordered: the entries between appear elsewhere)"),
        Problem(4, 6, "prev_hash links to seq 5, not to seq 4 before it (reordered)"),
        Problem(5, 5, "seq 5 appears after seq 6 (reordered)"),
    ]


def test_gap_with_some_entries_elsewhere_named(pristine: Log) -> None:
    first, second, _, fourth, fifth = pristine.receipts[:5]
    problems = verify_entries([first, second, fifth, fourth], SERVER_PUB).problems
    assert problems == [
        Problem(2, 5, "seq 5 follows seq 2 (1 of the 2 entries between are missing)"),
        Problem(2, 5, "prev_hash links to seq 4, not to seq 2 before it (reordered)"),
        Problem(3, 4, "seq 4 appears after seq 5 (reordered)"),
    ]


def test_duplicated_export_line_named(pristine: Log) -> None:
    entries = [*pristine.receipts[:4], pristine.receipts[3], *pristine.receipts[4:]]
    assert verify_entries(entries, SERVER_PUB).problems == [
        Problem(4, 4, "seq 4 appears twice (duplicate)")
    ]


def test_another_servers_key_fails_every_signature(pristine: Log) -> None:
    other = public_key_text(Ed25519PrivateKey.generate())
    problems = verify_entries(pristine.receipts, other).problems
    assert problems == [Problem(i, i + 1, BAD_SIGNATURE) for i in range(10)]
    with pytest.raises(BlindlinkError, match="ed25519:"):
        verify_entries(pristine.receipts, "not a key")


def test_append_is_part_of_the_callers_transaction(db: Path) -> None:
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE state (note TEXT)")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO state VALUES ('rolled back')")
        append_entry(conn, SERVER_KEY, "run_approved", PROJECT_A, "custodian", {})
        conn.execute("ROLLBACK")
        assert len(read_entries(conn)) == 10
        assert conn.execute("SELECT COUNT(*) FROM state").fetchone() == (0,)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO state VALUES ('kept')")
        details = {"rows": (1, 2)}
        entry = append_entry(conn, SERVER_KEY, "run_approved", PROJECT_A, "custodian", details)
        conn.execute("COMMIT")
        assert read_entries(conn)[-1] == entry and entry.seq == 11
        assert conn.execute("SELECT COUNT(*) FROM state").fetchone() == (1,)
        with pytest.raises(RuntimeError, match="transaction"):
            append_entry(conn, SERVER_KEY, "run_approved", PROJECT_A, "custodian", {})
        assert len(read_entries(conn)) == 11
    assert verify_entries(exported(db), SERVER_PUB).ok


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "anything"}, "unknown audit entry kind"),
        ({"party": "Agency A"}, "audit party must be one of"),
        ({"now": datetime(2026, 5, 1, 9, 0)}, "timezone-aware"),
    ],
)
def test_append_refuses_bad_arguments(change: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"kind": "run_started", "party": "", "now": START}
    arguments.update(change)
    with closing(sqlite3.connect(":memory:", isolation_level=None)) as conn:
        conn.executescript(SCHEMA_SQL)
        conn.execute("BEGIN")
        with pytest.raises(ValueError, match=message):
            append_entry(conn, SERVER_KEY, project_id=PROJECT_A, details={}, **arguments)
        assert read_entries(conn) == []


def test_append_records_utc_time() -> None:
    with closing(sqlite3.connect(":memory:", isolation_level=None)) as conn:
        conn.executescript(SCHEMA_SQL)
        conn.execute("BEGIN")
        local = datetime(2026, 5, 1, 11, 30, tzinfo=timezone(timedelta(hours=2)))
        entry = append_entry(conn, SERVER_KEY, "run_started", PROJECT_A, "", {}, local)
    assert entry.time == "2026-05-01T09:30:00.000000Z"


@pytest.mark.parametrize(
    "alter",
    [
        lambda r: r["details"].update(matches=1),
        lambda r: r.update(seq=7),
        lambda r: r.update(signature=r["signature"][:-4] + "AAA="),
        lambda r: r.pop("prev_hash"),
        lambda r: r.update(seq="6"),
    ],
)
def test_receipt_verifies_and_fails_when_altered(
    pristine: Log, alter: Callable[[dict], object]
) -> None:
    receipt = pristine.receipts[5].to_json()
    assert verify_receipt(receipt, SERVER_PUB)
    alter(receipt)
    assert not verify_receipt(receipt, SERVER_PUB)
    assert verify_receipt(pristine.receipts[5].to_json(), SERVER_PUB)  # to_json is a copy


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seq": None}, "field 'seq' must be a JSON integer"),
        ({"seq": True}, "field 'seq' must be a JSON integer"),
        ({"details": []}, "field 'details' must be a JSON object"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_from_json_names_the_bad_field(
    pristine: Log, change: dict[str, object], message: str
) -> None:
    document = pristine.receipts[0].to_json() | change
    with pytest.raises(AuditFormatError, match=message):
        AuditEntry.from_json(document)
    document = pristine.receipts[0].to_json()
    del document["time"]
    with pytest.raises(AuditFormatError, match="lacks field.*time"):
        AuditEntry.from_json(document)


def test_read_export_names_the_bad_line(db: Path) -> None:
    out = db.parent / "audit.jsonl"
    export_log(db, out)
    lines = out.read_text(encoding="utf-8").splitlines()
    out.write_text("\n".join([lines[0], lines[1][:-1], *lines[2:]]), encoding="utf-8")
    with pytest.raises(InputError, match="line 2: not JSON"):
        read_export(out)
    out.write_text("\n".join([lines[0], lines[1], "{}"]), encoding="utf-8")
    with pytest.raises(InputError, match="line 3: audit entry lacks field"):
        read_export(out)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    parser = argparse.ArgumentParser()
    add_audit_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.run(args)
    return code, capsys.readouterr().out.splitlines()


def test_cli_export_and_verify(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    export = tmp_path / "audit.jsonl"
    export_args = ["audit", "export", "--data-dir", str(db.parent), "--out", str(export)]
    assert run_cli(export_args, capsys) == (0, [f"wrote 10 audit entries to {export}"])
    pub = tmp_path / "server.pub"
    pub.write_text(SERVER_PUB + "\n", encoding="ascii")
    for key in (SERVER_PUB, str(pub)):
        verify_args = ["audit", "verify", str(export), "--server-key", key]
        assert run_cli(verify_args, capsys) == (0, ["audit log OK: 10 entries"])

    tamper(db, ("UPDATE audit_log SET details='{}' WHERE seq=6", ()))
    assert run_cli(export_args, capsys)[0] == 0
    assert run_cli(["audit", "verify", str(export), "--server-key", SERVER_PUB], capsys) == (
        1,
        [f"entry at line 6 (seq 6): {EDITED}"],
    )


def test_cli_verifies_a_project_export_as_partial(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    export = tmp_path / "project.jsonl"
    export_args = ["audit", "export", "--data-dir", str(db.parent), "--out", str(export)]
    assert run_cli([*export_args, "--project", PROJECT_B], capsys)[0] == 0
    verify_args = ["audit", "verify", str(export), "--server-key", SERVER_PUB]
    assert run_cli([*verify_args, "--partial"], capsys) == (
        0,
        [f"audit log OK: 2 entries of project {PROJECT_B}"],
    )
    code, lines = run_cli(verify_args, capsys)
    assert code == 1 and lines[0] == f"entry at line 1 (seq 3): {NO_ENTRIES_BEFORE_3}"


def test_cli_verify_checks_receipts(
    db: Path, pristine: Log, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tamper(db, ("DELETE FROM audit_log WHERE seq=10", ()))
    export = tmp_path / "audit.jsonl"
    export_log(db, export)
    kept = tmp_path / "kept.json"
    kept.write_text(json.dumps([r.to_json() for r in pristine.receipts[:9]]), encoding="utf-8")
    last = tmp_path / "last.json"
    last.write_text(json.dumps(pristine.receipts[9].to_json()), encoding="utf-8")
    base = ["audit", "verify", str(export), "--server-key", SERVER_PUB, "--receipt", str(kept)]
    assert run_cli(base, capsys) == (0, ["audit log OK: 9 entries"])
    assert run_cli([*base, "--receipt", str(last)], capsys) == (
        1,
        [f"receipt {last}: receipt for seq 10 (data_deleted): no such entry in the log (removed)"],
    )
    forged_receipt = pristine.receipts[9].to_json() | {"details": {"files": 0}}
    last.write_text(json.dumps(forged_receipt), encoding="utf-8")
    assert run_cli([*base, "--receipt", str(last)], capsys) == (
        1,
        [f"receipt {last}: receipt 1 is not validly signed by the server key"],
    )


def test_cli_refuses_a_bad_key_or_missing_database(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_audit_commands(parser.add_subparsers(dest="command", required=True))
    missing = tmp_path / "no.pub"
    args = parser.parse_args(["audit", "verify", "x.jsonl", "--server-key", str(missing)])
    with pytest.raises(InputError, match="no.pub"):
        args.run(args)
    args = parser.parse_args(["audit", "export", "--data-dir", str(tmp_path), "--out", "x"])
    with pytest.raises(InputError, match="database not found"):
        args.run(args)


# --- one project's entries: a partial export -----------------------------------------------

A_SEQS = [1, 2, 4, 5, 6, 7, 9, 10]  # project A's entries, project_seq 1-8


def test_each_project_has_its_own_chain(pristine: Log) -> None:
    entries = [e for e in pristine.receipts if e.project_id == PROJECT_A]
    assert [e.seq for e in entries] == A_SEQS
    assert [e.project_seq for e in entries] == list(range(1, 9))
    assert entries[0].prev_project_hash == GENESIS
    assert all(
        b.prev_project_hash == a.entry_hash for a, b in zip(entries, entries[1:], strict=False)
    )


@pytest.mark.parametrize("removed", range(1, 8))
def test_partial_export_names_a_removed_entry(db: Path, removed: int) -> None:
    """Removing any of project A's entries but its newest is named in its export alone."""
    tamper(db, ("DELETE FROM audit_log WHERE seq=?", (A_SEQS[removed - 1],)))
    problems = verify_entries(exported(db, PROJECT_A), SERVER_PUB, partial=True).problems
    after = f"project_seq {removed - 1}" if removed > 1 else "the project's start"
    follows = f"project_seq {removed + 1} follows {after} (entry {removed} is missing)"
    assert problems == [Problem(removed - 1, A_SEQS[removed], follows)]


def test_partial_export_lines_removed_reordered_duplicated_or_foreign_are_named(
    pristine: Log,
) -> None:
    entries = [e for e in pristine.receipts if e.project_id == PROJECT_A]
    other = next(e for e in pristine.receipts if e.project_id == PROJECT_B)

    def problems(changed: list[AuditEntry]) -> list[str]:
        return [p.reason for p in verify_entries(changed, SERVER_PUB, partial=True).problems]

    assert problems(entries) == []
    assert problems(entries[:3] + entries[4:]) == [
        "project_seq 5 follows project_seq 3 (entry 4 is missing)"
    ]
    swapped = [*entries[:3], entries[4], entries[3], *entries[5:]]
    assert problems(swapped) == [
        "project_seq 5 follows project_seq 3 (reordered: the entries between appear elsewhere)",
        "project_seq 4 appears after 5 (reordered)",
    ]
    assert problems([*entries[:4], entries[3], *entries[4:]]) == [
        "project_seq 4 appears twice (duplicate)"
    ]
    assert problems([*entries[:4], other, *entries[4:]]) == [
        f"an entry of project {PROJECT_B}, not {PROJECT_A} (inserted)"
    ]


def test_partial_export_names_a_forged_entry_but_not_its_successor(pristine: Log) -> None:
    entries = [e for e in pristine.receipts if e.project_id == PROJECT_A]
    key = Ed25519PrivateKey.generate()
    fields = (6, entries[2].time, "run_approved", PROJECT_A, "custodian", {}, entries[2].prev_hash)
    digest = entry_hash(*fields, 4, entries[2].entry_hash)
    fake = AuditEntry(*fields, digest, sign(key, digest.encode()), 4, entries[2].entry_hash)
    problems = verify_entries([*entries[:3], fake, *entries[3:]], SERVER_PUB, partial=True)
    assert problems.problems == [Problem(3, 6, BAD_SIGNATURE)]


def test_edited_project_link_with_recomputed_hash_fails_signature(db: Path) -> None:
    entry = exported(db, PROJECT_A)[3]
    fields = (entry.seq, entry.time, entry.kind, PROJECT_A, entry.party, entry.details)
    digest = entry_hash(*fields, entry.prev_hash, 3, entry.prev_project_hash)
    tamper(
        db,
        (
            "UPDATE audit_log SET project_seq=3, entry_hash=? WHERE seq=?",
            (digest, entry.seq),
        ),
    )
    reasons = [
        p.reason for p in verify_entries(exported(db, PROJECT_A), SERVER_PUB, partial=True).problems
    ]
    assert BAD_SIGNATURE in reasons


def test_checkpoint_names_the_newest_entries_removed(db: Path) -> None:
    checkpoint = read_checkpoint(db.parent / CHECKPOINT_NAME, SERVER_PUB)
    assert (checkpoint.head.seq, checkpoint.projects[PROJECT_B].seq) == (10, 8)
    tamper(db, ("DELETE FROM audit_log WHERE seq >= 8", ()))
    whole, project_a = exported(db), exported(db, PROJECT_A)
    assert verify_entries(whole, SERVER_PUB).ok  # a truncated log is a valid chain
    assert verify_entries(project_a, SERVER_PUB, partial=True).ok
    hashes = {e.seq: e.entry_hash for e in whole}
    named = f"the checkpoint of {checkpoint.time} names seq"
    assert checkpoint_problems(checkpoint, hashes.get) == [
        f"{named} 10 as the log's newest entry; the log lacks it (entries were removed)"
    ]
    assert checkpoint_problems(checkpoint, hashes.get, PROJECT_A) == [
        f"{named} 10 as project {PROJECT_A}'s newest entry; the log lacks it (entries were removed)"
    ]
    assert checkpoint_problems(checkpoint, {3: "0" * 64}.get, PROJECT_B) == [
        f"{named} 8 as project {PROJECT_B}'s newest entry; the log lacks it (entries were removed)"
    ]


def test_checkpoint_must_be_signed_by_the_server(db: Path) -> None:
    path = db.parent / CHECKPOINT_NAME
    document = json.loads(path.read_text())
    document["seq"] = 9
    path.write_text(json.dumps(document))
    with pytest.raises(AuditFormatError, match="not signed by the server key"):
        read_checkpoint(path, SERVER_PUB)
    path.write_text("[]")
    with pytest.raises(AuditFormatError, match="not an audit checkpoint"):
        read_checkpoint(path, SERVER_PUB)


def test_cli_partial_verify_with_checkpoint(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    export = tmp_path / "project.jsonl"
    export_args = ["audit", "export", "--data-dir", str(db.parent), "--out", str(export)]
    checkpoint = ["--checkpoint", str(db.parent / CHECKPOINT_NAME)]
    verify_args = ["audit", "verify", str(export), "--server-key", SERVER_PUB, "--partial"]
    assert run_cli([*export_args, "--project", PROJECT_A], capsys)[0] == 0
    assert run_cli([*verify_args, *checkpoint], capsys) == (
        0,
        [f"audit log OK: 8 entries of project {PROJECT_A}"],
    )
    lines = export.read_text(encoding="utf-8").splitlines(keepends=True)
    export.write_text("".join(lines[:-1]), encoding="utf-8")  # the newest entry left out
    code, out = run_cli([*verify_args, *checkpoint], capsys)
    assert code == 1 and out[0].startswith(f"checkpoint {checkpoint[1]}: the checkpoint of ")
    assert out[0].endswith("the log lacks it (entries were removed)")
    export.write_text("".join(lines[:2] + lines[3:]), encoding="utf-8")
    assert run_cli(verify_args, capsys) == (
        1,
        ["entry at line 3 (seq 5): project_seq 4 follows project_seq 2 (entry 3 is missing)"],
    )


# --- logs from before per-project links -----------------------------------------------------

LEGACY_SCHEMA = """
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY, time TEXT NOT NULL, kind TEXT NOT NULL, project_id TEXT NOT NULL,
    party TEXT NOT NULL, details TEXT NOT NULL, prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL, signature TEXT NOT NULL
);
"""


def legacy_log(path: Path) -> None:
    """A log as servers wrote it before per-project links: EVENTS[:5], without link fields."""
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(LEGACY_SCHEMA)
        prev = GENESIS
        for seq, (kind, project, party, details) in enumerate(EVENTS[:5], 1):
            time = f"2026-05-01T09:0{seq}:00.000000Z"
            digest = entry_hash(seq, time, kind, project, party, details, prev)
            row = (seq, time, kind, project, party, json.dumps(details), prev, digest)
            conn.execute(
                "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, sign(SERVER_KEY, digest.encode())),
            )
            prev = digest
        conn.commit()


def test_a_legacy_log_is_migrated_and_links_count_on_from_its_entries(tmp_path: Path) -> None:
    """A data dir from before per-project links opens; its log gets a checkpoint, new entries
    count on from the project's earlier ones, and removing an earlier one is still named."""
    data_dir = tmp_path / "server-data"
    data_dir.mkdir()
    path = data_dir / "blindlink.db"
    legacy_log(path)
    store = Store(data_dir, SERVER_KEY)
    try:
        store.record_refusal(PROJECT_A, "requester", {"rule": "run"})
    finally:
        store.close()
    appended = exported(path)[-1]
    assert (appended.seq, appended.project_seq) == (6, 5)  # A had 4 unlinked entries
    assert verify_data_dir(data_dir, SERVER_PUB, in_use=False).ok
    assert verify_entries(exported(path, PROJECT_A), SERVER_PUB, partial=True).ok
    assert "project_seq" not in exported(path)[0].to_json()
    tamper(path, ("DELETE FROM audit_log WHERE seq=2", ()))
    problems = verify_entries(exported(path, PROJECT_A), SERVER_PUB, partial=True).problems
    assert problems == [Problem(3, 6, "project_seq 5 follows project_seq 3 (entry 4 is missing)")]
