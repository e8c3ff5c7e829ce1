"""Records the custodian removes are erased from the server's storage: overwritten with zeros in
every stored file that holds them once the update commits (the upload's encodings file and
earlier appended files; older index versions are deleted at the commit), audited, verified by
the integrity check, finished at the next start after a crash, and an index rebuilt from the
erased files decides as the one the updates built."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import Identities
from support.encodings import encodings_file, keyed_rows
from support.server_process import server_launcher
from support.server_process import signed_agreement as sign
from support.waiting import wait_until

from blindlink._generated import linkage_pb2 as pb
from blindlink.agreement.signing import parse_signed
from blindlink.cli.main import main
from blindlink.client.linkage_client import LinkageClient, ServerError
from blindlink.encoding.encodings_file import HEADER_SIZE, read_header, read_records
from blindlink.encoding.schema import LinkageSchema
from blindlink.server.app import RunningServer
from blindlink.store.directory import ENCODINGS_DIR, INDEX_DIR
from blindlink.store.erasure import erase_records, payload_hashes
from blindlink.store.integrity import verify_data_dir

KEYS = [[{"field": "surname"}], [{"field": "postcode"}]]
RECORDS, APPENDED = 2_000, 500
VICTIMS = [7, 2_100]  # a row of the upload, a row an earlier update appended
KEPT = [5, 1_999, 2_000, 2_499]


def agreement(
    identities: Identities, schema: LinkageSchema, reference: str, **limits: Any
) -> bytes:
    return sign(
        identities,
        schema,
        reference,
        blocking={"method": "keys", "keys": KEYS},
        custodian_release="pairs",
        delete_encodings_after_release=False,
        **limits,
    )


def custodian_records(records: int, seed: int) -> np.ndarray:
    """Random 1024-bit encodings, each followed by two blocking keys (as uploaded)."""
    rng = np.random.default_rng(seed)
    encodings = rng.integers(0, 256, (records, 128), dtype=np.uint8)
    keys = rng.integers(1, max(records // 5, 2), (records, len(KEYS))).astype(np.uint64)
    return keyed_rows(encodings, keys)


def files_holding(data_dir: Path, needle: bytes) -> list[str]:
    """The files under `data_dir` (any depth) whose bytes contain `needle`."""
    return sorted(
        str(path.relative_to(data_dir))
        for path in data_dir.rglob("*")
        if path.is_file() and needle in path.read_bytes()
    )


def audit_details(data_dir: Path, kind: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(data_dir / "blindlink.db")) as db:
        rows = db.execute("SELECT details FROM audit_log WHERE kind=? ORDER BY seq", (kind,))
        return [json.loads(details) for (details,) in rows]


@dataclass(frozen=True)
class Erased:
    project: str
    encodings_id: str
    records: np.ndarray  # every custodian record, as uploaded and appended
    before: dict[int, list[str]]  # per victim, the files that held its encoding before removal
    upload_file: Path
    appended_file: Path


@pytest.fixture
def erased(
    tmp_path: Path,
    identities: Identities,
    schema: LinkageSchema,
    server: RunningServer,
    custodian: LinkageClient,
    requester: LinkageClient,
) -> Erased:
    """A project whose custodian uploaded RECORDS records, appended APPENDED, then removed
    VICTIMS (one of each)."""
    terms = agreement(identities, schema, "erasure")
    encodings_id = parse_signed(terms).agreement.encodings_id
    records = custodian_records(RECORDS + APPENDED, 3)
    project = requester.create_project(terms).project_id
    custodian.upload(project, encodings_file(tmp_path / "c.bin", records[:RECORDS], encodings_id))
    appended = encodings_file(tmp_path / "a.bin", records[RECORDS:], encodings_id)
    custodian.update(project, RECORDS, appended)
    data_dir = server.store.data_dir
    before = {row: files_holding(data_dir, records[row, :128].tobytes()) for row in VICTIMS}
    receipt = custodian.update(project, RECORDS + APPENDED, remove=VICTIMS)
    assert (receipt.version, receipt.removed) == (2, 2)
    upload = server.store.live_custodian_upload(project)
    assert upload is not None and upload.path is not None
    (update,) = [u for u in server.store.custodian_updates(upload.upload_id) if u.path]
    assert update.path is not None
    return Erased(project, encodings_id, records, before, upload.path, update.path)


def test_a_removed_record_is_in_no_file_of_the_data_directory_once_its_update_commits(
    server: RunningServer, erased: Erased
) -> None:
    data_dir = server.store.data_dir
    upload_id = erased.upload_file.stem
    assert erased.before == {
        7: [
            f"{ENCODINGS_DIR}/{erased.upload_file.name}",
            f"{INDEX_DIR}/{upload_id}.1/encodings.npy",
        ],
        2_100: [
            f"{ENCODINGS_DIR}/{erased.appended_file.name}",
            f"{INDEX_DIR}/{upload_id}.1/encodings.npy",
        ],
    }
    for row in VICTIMS:
        assert files_holding(data_dir, erased.records[row, :128].tobytes()) == []
    # The whole record (encoding and blocking keys) is zeros where it was; the rest is intact.
    held = np.vstack([read_records(erased.upload_file), read_records(erased.appended_file)])
    assert not held[VICTIMS].any()
    kept = np.setdiff1d(np.arange(RECORDS + APPENDED), VICTIMS)
    assert np.array_equal(held[kept], erased.records[kept])
    assert [p.name for p in (data_dir / INDEX_DIR).iterdir()] == [f"{upload_id}.2"]
    (entry,) = audit_details(data_dir, "rows_erased")
    update_id = audit_details(data_dir, "custodian_updated")[-1]["update_id"]
    assert entry == {
        "update_id": update_id,
        "upload_id": upload_id,
        "version": 2,
        "erased": 2,
        "files": 2,
    }
    assert verify_data_dir(data_dir, server.public_key, in_use=True).problems == []


def test_the_integrity_check_verifies_erased_files_and_detects_altered_bytes(
    server: RunningServer, erased: Erased
) -> None:
    data_dir = server.store.data_dir
    record = erased.records.shape[1]

    def problems_after(path: Path, row: int) -> list[str]:
        """The check's problems with a bit of record `row` of the file at `path` flipped."""
        with open(path, "r+b") as f:
            f.seek(HEADER_SIZE + row * record + 3)
            old = f.read(1)[0]
            f.seek(-1, 1)
            f.write(bytes([old ^ 1]))
        problems = verify_data_dir(data_dir, server.public_key, in_use=True).problems
        with open(path, "r+b") as f:
            f.seek(HEADER_SIZE + row * record + 3)
            f.write(bytes([old]))
        return problems

    upload_id = erased.upload_file.stem
    altered = f"upload {upload_id}: content hash does not match the recorded content_sha256"
    # Kept records of the upload's file and of the appended file (custodian rows 5 and 2200).
    for path, row in ((erased.upload_file, 5), (erased.appended_file, 200)):
        (problem,) = problems_after(path, row)
        assert problem.startswith(altered), problem
    # Data written back into an erased record is a problem too, though the hash skips it.
    (problem,) = problems_after(erased.upload_file, 7)
    assert "still holds records of the 1 rows the custodian removed" in problem
    assert verify_data_dir(data_dir, server.public_key, in_use=True).problems == []


def test_an_update_is_refused_when_the_file_it_would_erase_from_was_altered(
    server: RunningServer, custodian: LinkageClient, erased: Erased
) -> None:
    """The hash recorded for the erased file is computed from verified content only."""
    with open(erased.upload_file, "r+b") as f:
        f.seek(HEADER_SIZE + 5 * erased.records.shape[1])
        f.write(bytes([erased.records[5, 0] ^ 1]))
    index_dir = server.store.data_dir / INDEX_DIR
    before = sorted(p.name for p in index_dir.iterdir())
    with pytest.raises(ServerError) as refused:
        custodian.update(erased.project, RECORDS + APPENDED, remove=[9])
    assert refused.value.code == grpc.StatusCode.DATA_LOSS
    assert "do not match their recorded content hash" in refused.value.details
    upload_id = erased.upload_file.stem
    assert len(server.store.custodian_updates(upload_id)) == 2
    assert sorted(p.name for p in index_dir.iterdir()) == before
    assert erased.records[9].tobytes() in erased.upload_file.read_bytes()


def test_an_index_rebuilt_from_the_erased_files_decides_as_the_one_updates_built(
    tmp_path: Path,
    server: RunningServer,
    requester: LinkageClient,
    custodian: LinkageClient,
    erased: Erased,
) -> None:
    """The batch holds exact copies of kept and removed custodian records."""
    copied = [*VICTIMS, *KEPT]
    batch = encodings_file(tmp_path / "r.bin", erased.records[copied], erased.encodings_id)
    index = server.store.index_dir / f"{erased.upload_file.stem}.2"
    built = {path.name: path.read_bytes() for path in index.iterdir() if path.is_file()}

    def matched(threshold: float) -> list[tuple[int, int]]:
        run_id = requester.upload(erased.project, batch, threshold=threshold).run_id
        assert requester.wait(erased.project, run_id).state == pb.RUN_STATE_DONE
        return list(zip(*server.store.matches(run_id), strict=True))

    expected = [(i, row) for i, row in enumerate(copied) if row in KEPT]
    assert matched(0.8) == expected
    shutil.rmtree(index)
    assert matched(0.81) == expected  # from an index the run built from the stored files
    rebuilt = {path.name: path.read_bytes() for path in index.iterdir() if path.is_file()}
    assert rebuilt == built


def test_erasing_is_idempotent_and_finishes_an_interrupted_erasure(tmp_path: Path) -> None:
    records = custodian_records(100, 4)
    path = encodings_file(tmp_path / "c.bin", records, "ab" * 32)
    rows = np.array([3, 50, 99])
    _, (erased,) = payload_hashes(path, rows)
    # As a crash leaves it: one record overwritten, the header not yet.
    with open(path, "r+b") as f:
        f.seek(HEADER_SIZE + 50 * records.shape[1])
        f.write(bytes(records.shape[1]))
    assert erase_records(path, rows, erased)
    assert read_header(path).content_sha256 == erased
    held = read_records(path)  # checks the payload against the header's hash
    assert not held[rows].any() and np.array_equal(
        np.delete(held, rows, 0), np.delete(records, rows, 0)
    )
    assert not erase_records(path, rows, erased)


launch_fixture = pytest.fixture(name="launch")(server_launcher)
KILL_RECORDS = 300_000


def test_a_server_killed_while_erasing_finishes_the_erasure_when_it_starts(
    tmp_path: Path,
    identities: Identities,
    schema: LinkageSchema,
    launch: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    terms = agreement(
        identities, schema, "killed while erasing", max_records_per_upload=KILL_RECORDS
    )
    encodings_id = parse_signed(terms).agreement.encodings_id
    records = custodian_records(KILL_RECORDS, 5)
    source = encodings_file(tmp_path / "c.bin", records, encodings_id)
    removed = np.arange(0, KILL_RECORDS, 2)  # enough rows to take a while to overwrite
    server = launch().start()
    with server.client("requester") as requester, server.client("custodian") as custodian:
        project = requester.create_project(terms).project_id
        custodian.upload(project, source)
        failures: list[BaseException] = []

        def update() -> None:
            try:
                custodian.update(project, KILL_RECORDS, remove=removed.tolist())
            except ServerError as exc:
                failures.append(exc)

        updating = threading.Thread(target=update)
        updating.start()
        assert wait_until(lambda: server.rows("SELECT count(*) FROM custodian_updates") == [(1,)])
        server.kill()
        updating.join()
    assert failures, "the update's receipt arrived before the kill: nothing was interrupted"
    assert server.rows("SELECT erased_at FROM custodian_updates") == [(None,)]
    upload_file = next((server.data_dir / ENCODINGS_DIR).iterdir())
    assert _held(upload_file, removed), "the erasure had finished before the kill"

    server.start()
    assert not _held(upload_file, removed)
    assert server.rows("SELECT erased_at IS NOT NULL FROM custodian_updates") == [(1,)]
    (entry,) = audit_details(server.data_dir, "rows_erased")
    assert (entry["erased"], entry["files"]) == (len(removed), 1)
    copied = [0, 1, 2, 3]
    batch = encodings_file(tmp_path / "r.bin", records[copied], encodings_id)
    with server.client("requester") as requester:
        run_id = requester.upload(project, batch).run_id
        assert requester.wait(project, run_id).state == pb.RUN_STATE_DONE
    assert server.rows("SELECT custodian_row FROM matches WHERE status=0 ORDER BY 1") == [
        (1,),
        (3,),
    ]
    server.terminate()
    _verified(server.data_dir, capsys)


def test_removals_committed_before_erasures_existed_are_erased_when_the_server_starts(
    tmp_path: Path,
    identities: Identities,
    schema: LinkageSchema,
    launch: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    terms = agreement(identities, schema, "from before erasures")
    encodings_id = parse_signed(terms).agreement.encodings_id
    records = custodian_records(RECORDS, 6)
    source = encodings_file(tmp_path / "c.bin", records, encodings_id)
    server = launch().start()
    with server.client("requester") as requester, server.client("custodian") as custodian:
        project = requester.create_project(terms).project_id
        custodian.upload(project, source)
        custodian.update(project, RECORDS, remove=VICTIMS[:1])
    server.terminate()
    # As such a server left it: the file as uploaded, and no erasure columns.
    upload_file = next((server.data_dir / ENCODINGS_DIR).iterdir())
    shutil.copyfile(source, upload_file)
    with closing(sqlite3.connect(server.data_dir / "blindlink.db")) as db:
        for table, column in (
            ("uploads", "erased_sha256"),
            ("custodian_updates", "erased_sha256"),
            ("custodian_updates", "erased_at"),
        ):
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        db.commit()
    assert files_holding(server.data_dir, records[7, :128].tobytes()) == [
        f"{ENCODINGS_DIR}/{upload_file.name}"
    ]
    server.start()
    server.terminate()
    assert files_holding(server.data_dir, records[7, :128].tobytes()) == []
    _verified(server.data_dir, capsys)


def _held(path: Path, rows: np.ndarray) -> bool:
    """Whether any of the records `rows` of the encodings file at `path` is not zeros, read
    whatever its header's hash says."""
    width = read_header(path).record_bytes
    payload = np.fromfile(path, dtype=np.uint8, offset=HEADER_SIZE).reshape(-1, width)
    return bool(payload[rows].any())


def _verified(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`blindlink admin verify` finds nothing wrong with the stopped server's data directory."""
    assert main(["admin", "verify", "--data-dir", str(data_dir)]) == 0, capsys.readouterr().out
    assert "data directory OK" in capsys.readouterr().out
