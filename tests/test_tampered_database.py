"""Edits of the server's database behind its back: the server refuses a stored agreement that no
longer hashes to its project ID, `admin verify` recomputes what the audit entries committed to
(agreement, uploads, runs' threshold, state, approval and decision, the pairs, the releases)
and names each edit, and the signed checkpoint catches the newest audit entries removed."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy
import pytest
from conftest import Identities
from support.encodings import encodings_file, planted_pairs
from support.server_process import signed_agreement

from blindlink.cli.main import main
from blindlink.client.linkage_client import LinkageClient, ServerError
from blindlink.encoding.schema import LinkageSchema
from blindlink.errors import BlindlinkError
from blindlink.server.app import RunningServer, start_server

CHECKPOINT_NAME = "audit-checkpoint.json"  # in the data dir


@dataclass(frozen=True)
class Linked:
    """A stopped server's data dir: one project (custodian release `count`, approval required)
    with two done runs: `released` approved and fetched by both, `pending` neither."""

    data_dir: Path
    project: str
    released: str
    pending: str


def sql(data_dir: Path, *statements: str) -> None:
    """What an operator with database access does, behind the server's back."""
    with closing(sqlite3.connect(data_dir / "blindlink.db")) as db:
        db.execute("PRAGMA foreign_keys=OFF")
        for statement in statements:
            db.execute(statement)
        db.commit()


def admin_verify(data_dir: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """`admin verify`'s output; it must exit 1 (problems) unless the output says OK."""
    status = main(["admin", "verify", "--data-dir", str(data_dir), *extra])
    out = capsys.readouterr().out
    assert status == (0 if out.startswith("data directory OK") else 1), out
    return out


@pytest.fixture(scope="module")
def linked(
    tmp_path_factory: pytest.TempPathFactory, identities: Identities, schema: LinkageSchema
) -> Linked:
    work = tmp_path_factory.mktemp("linked")
    requester_rows, custodian_rows, _ = planted_pairs(200, 40, seed=3)
    data_dir = work / "data"
    server = start_server(data_dir, "127.0.0.1:0", None)
    try:
        address = f"127.0.0.1:{server.port}"
        with (
            LinkageClient(address, "requester", None) as requester,
            LinkageClient(address, "custodian", None) as custodian,
        ):
            agreement = signed_agreement(
                identities,
                schema,
                "tampering",
                custodian_approval=True,
                delete_encodings_after_release=False,
            )
            project = requester.create_project(agreement).project_id
            custodian.upload(project, encodings_file(work / "c.bin", custodian_rows, schema.sha256))
            runs = []
            for name, rows in (("r1", requester_rows), ("r2", requester_rows[::-1].copy())):
                run_id = requester.upload(
                    project, encodings_file(work / f"{name}.bin", rows, schema.sha256)
                ).run_id
                requester.wait(project, run_id)
                runs.append(run_id)
            with pytest.raises(ServerError):  # only the custodian approves: a refusal
                requester.approve(project, runs[0])
            custodian.approve(project, runs[0])
            requester.release(project, runs[0])
            custodian.release(project, runs[0])
    finally:
        server.stop(grace=1)
    return Linked(data_dir, project, *runs)


@pytest.fixture
def copy(linked: Linked, tmp_path: Path) -> Linked:
    """A copy of the linked data dir for one test to tamper with."""
    data_dir = Path(shutil.copytree(linked.data_dir, tmp_path / "data"))
    return Linked(data_dir, linked.project, linked.released, linked.pending)


@contextmanager
def running(data_dir: Path) -> Iterator[str]:
    """A server on `data_dir` for the duration of a with block; its address."""
    server = start_server(data_dir, "127.0.0.1:0", None)
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop(grace=1)


def edit_agreement(d: Linked) -> None:
    """The custodian's release `count` -> `pairs` in the stored agreement."""
    with closing(sqlite3.connect(d.data_dir / "blindlink.db")) as db:
        (raw,) = db.execute(
            "SELECT agreement FROM projects WHERE project_id=?", (d.project,)
        ).fetchone()
        document = json.loads(raw)
        assert document["release"]["custodian"] == "count"
        document["release"]["custodian"] = "pairs"
        edited = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        db.execute("UPDATE projects SET agreement=? WHERE project_id=?", (edited, d.project))
        db.commit()


EDITS = {
    "agreement": (edit_agreement, "its stored agreement does not hash to its ID (altered)"),
    "approval granted": (
        lambda d: sql(d.data_dir, f"UPDATE runs SET approved=1 WHERE run_id='{d.pending}'"),
        "approved is True, but its audit log holds no run_approved entry",
    ),
    "approval withdrawn": (
        lambda d: sql(d.data_dir, f"UPDATE runs SET approved=0 WHERE run_id='{d.released}'"),
        "approved is False, but its audit log holds a run_approved entry",
    ),
    "threshold": (
        lambda d: sql(d.data_dir, f"UPDATE runs SET threshold=0.5 WHERE run_id='{d.pending}'"),
        "threshold 0.5, but its audit entries record [0.8]",
    ),
    "state": (
        lambda d: sql(d.data_dir, f"UPDATE runs SET state='failed' WHERE run_id='{d.pending}'"),
        "state failed, but its last entry is run_finished",
    ),
    "decision": (
        lambda d: sql(
            d.data_dir,
            "UPDATE runs SET decision=json_set(decision, '$.threshold', 0.6) "
            f"WHERE run_id='{d.pending}'",
        ),
        "its counts or decision differ from its run_finished entry (altered)",
    ),
    "match rows, count kept": (
        lambda d: sql(
            d.data_dir,
            "UPDATE matches SET custodian_row = (custodian_row + 1) % 200 WHERE rowid = "
            f"(SELECT min(rowid) FROM matches WHERE run_id='{d.pending}')",
        ),
        "its stored pairs do not hash to its run_finished entry's (altered)",
    ),
    "batch": (
        lambda d: sql(
            d.data_dir,
            f"UPDATE runs SET batch_id=(SELECT batch_id FROM runs WHERE run_id='{d.released}') "
            f"WHERE run_id='{d.pending}'",
        ),
        "but its upload_committed entry records upload",
    ),
    "upload": (
        lambda d: sql(d.data_dir, "UPDATE uploads SET count=count+1 WHERE party='custodian'"),
        "differ from its upload_committed audit entry (altered)",
    ),
    "custodian upload removed": (
        lambda d: sql(d.data_dir, "DELETE FROM uploads WHERE party='custodian'"),
        "; the uploads table lacks it",
    ),
    "run removed": (
        lambda d: sql(d.data_dir, f"DELETE FROM runs WHERE run_id='{d.pending}'"),
        "; the runs table lacks it",
    ),
    "results deleted": (
        lambda d: sql(d.data_dir, f"UPDATE runs SET results_deleted=1 WHERE run_id='{d.pending}'"),
        "results_deleted is True, but its audit log says otherwise",
    ),
    "release record": (
        lambda d: sql(d.data_dir, f"DELETE FROM releases WHERE run_id='{d.released}'"),
        "fetched by nobody, but released to ['custodian', 'requester']",
    ),
    "newest audit entries": (
        lambda d: sql(
            d.data_dir, "DELETE FROM audit_log WHERE seq > (SELECT max(seq) - 2 FROM audit_log)"
        ),
        "as the log's newest entry; the log lacks it (entries were removed)",
    ),
}


def test_an_untouched_data_dir_verifies(linked: Linked, capsys: pytest.CaptureFixture) -> None:
    out = admin_verify(linked.data_dir, capsys)
    assert out.startswith("data directory OK: 1 projects, 3 encodings files")


@pytest.mark.parametrize("edit", EDITS)
def test_admin_verify_names_each_edit(
    copy: Linked, capsys: pytest.CaptureFixture[str], edit: str
) -> None:
    harm, words = EDITS[edit]
    harm(copy)
    out = admin_verify(copy.data_dir, capsys)
    assert words in out


def test_an_edited_agreement_is_refused_by_the_server(
    server: RunningServer,
    requester: LinkageClient,
    custodian: LinkageClient,
    make_agreement: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = custodian.create_project(make_agreement()).project_id  # type: ignore[operator]
    data_dir = server.store.data_dir
    edit_agreement(Linked(data_dir, project, "", ""))
    for client in (custodian, requester):
        with pytest.raises(ServerError) as err:
            client.status(project)
        assert err.value.code == grpc.StatusCode.DATA_LOSS
        assert "does not hash to the project ID" in err.value.details
    with pytest.raises(ServerError) as err:
        custodian.delete(project)
    assert err.value.code == grpc.StatusCode.DATA_LOSS
    assert "does not hash to its ID" in admin_verify(data_dir, capsys)


def test_a_release_made_from_edited_pairs_is_named_after_they_are_restored(
    copy: Linked, capsys: pytest.CaptureFixture[str]
) -> None:
    """Edit the pairs, let the requester fetch them, put them back: the release's entry hashed
    rows that the stored pairs do not give."""
    pending = f"run_id='{copy.pending}'"
    first = f"rowid = (SELECT min(rowid) FROM matches WHERE {pending})"
    sql(copy.data_dir, f"UPDATE matches SET requester_row = requester_row + 1000 WHERE {first}")
    with running(copy.data_dir) as address:
        with LinkageClient(address, "custodian", None) as custodian:
            custodian.approve(copy.project, copy.pending)
        with LinkageClient(address, "requester", None) as requester:
            assert max(requester.release(copy.project, copy.pending).own_rows) >= 1000
    sql(copy.data_dir, f"UPDATE matches SET requester_row = requester_row - 1000 WHERE {first}")
    out = admin_verify(copy.data_dir, capsys)
    assert "the requester's release" in out and "holds rows the stored pairs do not give" in out
    assert "stored pairs do not hash" not in out


def test_removed_newest_entries_stop_the_server_and_an_old_checkpoint_copy_catches_rollback(
    copy: Linked, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = Path(shutil.copy(copy.data_dir / CHECKPOINT_NAME, tmp_path / "kept-checkpoint.json"))
    sql(copy.data_dir, "DELETE FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log)")
    with pytest.raises(BlindlinkError, match="the log lacks it"):
        start_server(copy.data_dir, "127.0.0.1:0", None)
    # The operator also removes the checkpoint: the server writes a new one from the log, but
    # the copy kept elsewhere still names the entry removed.
    (copy.data_dir / CHECKPOINT_NAME).unlink()
    with running(copy.data_dir):
        pass
    assert "the log lacks it" not in admin_verify(copy.data_dir, capsys)
    out = admin_verify(copy.data_dir, capsys, "--checkpoint", str(kept))
    assert "the log lacks it (entries were removed)" in out


def test_a_forged_checkpoint_is_refused(copy: Linked, capsys: pytest.CaptureFixture[str]) -> None:
    path = copy.data_dir / CHECKPOINT_NAME
    document = json.loads(path.read_text())
    document["seq"] -= 1
    path.write_text(json.dumps(document))
    assert "not signed by the server key" in admin_verify(copy.data_dir, capsys)
    with pytest.raises(BlindlinkError, match="not signed by the server key"):
        start_server(copy.data_dir, "127.0.0.1:0", None)


@pytest.mark.parametrize("kind", ["run_approved", "request_refused", "release_fetched"])
def test_an_entry_left_out_of_a_project_export_is_named(
    linked: Linked, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    export = tmp_path / "project.jsonl"
    data_dir = str(linked.data_dir)
    assert main(["audit", "export", "--data-dir", data_dir, "--out", str(export), "--project",
                 linked.project]) == 0  # fmt: skip
    key = ["--server-key", str(linked.data_dir / "server-signing.pub")]
    verify = ["audit", "verify", str(export), *key, "--partial"]
    assert main(verify) == 0
    lines = export.read_text(encoding="utf-8").splitlines(keepends=True)
    left_out = next(i for i, line in enumerate(lines) if json.loads(line)["kind"] == kind)
    export.write_text("".join(lines[:left_out] + lines[left_out + 1 :]), encoding="utf-8")
    capsys.readouterr()
    assert main(verify) == 1
    assert f"(entry {left_out + 1} is missing)" in capsys.readouterr().out


def test_commitments_are_keyed_and_unchecked_without_the_servers_key(
    copy: Linked, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whoever reads an export cannot test guesses of the matched pairs against the run's
    commitment: it is keyed with the server's signing key, without which admin verify says the
    pairs were not checked rather than that they are intact."""
    with closing(sqlite3.connect(copy.data_dir / "blindlink.db")) as db:
        (details,) = db.execute(
            "SELECT details FROM audit_log WHERE kind='run_finished' AND "
            "json_extract(details, '$.run_id')=?",
            (copy.released,),
        ).fetchone()
        pairs = db.execute(
            "SELECT requester_row, custodian_row, status FROM matches WHERE run_id=?",
            (copy.released,),
        ).fetchall()
    committed = json.loads(details)["matches_sha256"]
    stored = numpy.array(sorted(pairs), dtype=">i8").tobytes()
    assert len(pairs) > 0
    assert committed != hashlib.sha256(stored).hexdigest()
    (copy.data_dir / "server-signing.key").unlink()
    out = admin_verify(copy.data_dir, capsys)
    assert f"run {copy.released}: its pairs and releases could not be checked" in out
