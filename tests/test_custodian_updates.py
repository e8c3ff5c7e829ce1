"""Custodian updates: appended records and removed rows, each update committed atomically and
audited; linking after a series of updates decides exactly as a fresh project with the final
data; refused updates change nothing; the requester learns nothing of them; a server killed
during an update keeps the version before it and recovers by itself."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import Cli, Identities, tls_args
from support.encodings import encodings_file, keyed_rows
from support.index import keyed_agreement
from support.server_process import server_launcher, signed_agreement
from support.waiting import wait_until

import blindlink
from blindlink import Client, Encoded
from blindlink._generated import linkage_pb2 as pb
from blindlink.agreement.signing import parse_signed
from blindlink.benchmarking.data import EncodedPair, encoded_pair
from blindlink.cli.main import main
from blindlink.client.linkage_client import LinkageClient, ServerError
from blindlink.encoding.blocking_keys import DEFAULT_SCHEMA_KEYS
from blindlink.encoding.schema import LinkageSchema, default_schema_path
from blindlink.index.build import InvalidUpdate, build_index, extend_index
from blindlink.index.custodian import CustodianIndex
from blindlink.index.layout import PARTIAL_SUFFIX
from blindlink.matching.blocking import KeyBlocking, custodian_key_counts
from blindlink.server.app import RunningServer
from blindlink.store.directory import INDEX_DIR
from blindlink.store.integrity import verify_data_dir
from blindlink.synthetic import GeneratedFiles, generate_datasets

BLOCKING = KeyBlocking.from_document(DEFAULT_SCHEMA_KEYS)
RECORDS = 3_000
KILL_RECORDS = 500_000  # about half a second to write an index version


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> EncodedPair:
    """Generated people with the default schema's blocking keys, half of them in both parties."""
    return encoded_pair(tmp_path_factory.mktemp("updates"), RECORDS, 0.5, 5, BLOCKING)


def custodian_file(pair: EncodedPair, path: Path, rows: Any, encodings_id: str) -> Path:
    records = keyed_rows(pair.custodian[rows], pair.custodian_keys[rows])
    return encodings_file(path, records, encodings_id)


def released_pairs(
    server: RunningServer, parties: dict[str, LinkageClient], project: str, batch: Path
) -> tuple[list[tuple[int, int]], dict[str, Any]]:
    """Upload a requester batch; its released (requester row, custodian row) pairs and how its
    run decided."""
    run_id = parties["requester"].upload(project, batch).run_id
    final = parties["requester"].wait(project, run_id)
    assert final.state == pb.RUN_STATE_DONE, final.message
    release = parties["custodian"].release(project, run_id)
    run = server.store.run(project, run_id)
    assert run is not None and run.decision is not None
    return sorted(zip(release.other_rows, release.own_rows, strict=True)), run.decision.to_dict()


def test_a_new_index_version_holds_the_final_records_and_a_run_keeps_the_one_it_opened(
    tmp_path: Path, pair: EncodedPair
) -> None:
    first = custodian_file(pair, tmp_path / "c.bin", slice(0, 2_000), "ab" * 32)
    appended = custodian_file(pair, tmp_path / "a.bin", slice(2_000, 3_000), "ab" * 32)
    build_index(first, "u", len(BLOCKING.keys), tmp_path / "u")
    batch = pair.requester_keys[:500]
    before = CustodianIndex(tmp_path / "u")
    removed = before.candidate_rows(batch)[[0, 5, -1]].tolist()  # rows the batch reads
    manifest = extend_index(tmp_path / "u", appended, removed, tmp_path / "u.1")
    assert (manifest.version, manifest.records, manifest.removed) == (1, RECORDS, 3)
    kept = np.setdiff1d(np.arange(RECORDS), removed)
    final = custodian_file(pair, tmp_path / "f.bin", kept, "ab" * 32)
    build_index(final, "f", len(BLOCKING.keys), tmp_path / "f")
    updated, fresh = CustodianIndex(tmp_path / "u.1"), CustodianIndex(tmp_path / "f")
    rows = updated.candidate_rows(batch)
    assert rows.tolist() == kept[fresh.candidate_rows(batch)].tolist()
    assert np.array_equal(updated.encodings[rows], pair.custodian[rows])
    # The counts of the batch's key values read from the postings are the final records'.
    final_counts = custodian_key_counts(batch, pair.custodian_keys[kept])
    assert np.array_equal(updated.look_up(batch)[1], final_counts)
    assert np.array_equal(
        updated.batch(pair.requester[:500], batch).shared.key_counts, final_counts
    )
    assert not np.array_equal(before.look_up(batch)[1], final_counts)
    # A run that opened version 0 keeps reading it after the update retired it.
    expected = before.batch(pair.requester[:500], batch).custodian_rows
    shutil.rmtree(tmp_path / "u")
    assert np.array_equal(before.batch(pair.requester[:500], batch).custodian_rows, expected)
    assert set(removed) <= set(expected.tolist()) and not set(removed) & set(rows.tolist())


@pytest.mark.parametrize(
    ("removed", "problem"),
    [([3_000], "row 3000 is not a custodian row"), ([7, 7], "row 7 is named twice")],
)
def test_an_index_version_is_not_built_for_rows_it_cannot_remove(
    tmp_path: Path, pair: EncodedPair, removed: list[int], problem: str
) -> None:
    source = custodian_file(pair, tmp_path / "c.bin", slice(None), "ab" * 32)
    build_index(source, "u", len(BLOCKING.keys), tmp_path / "u")
    extend_index(tmp_path / "u", None, [8], tmp_path / "u.1")
    with pytest.raises(InvalidUpdate, match=problem):
        extend_index(tmp_path / "u.1", None, removed, tmp_path / "u.2")
    with pytest.raises(InvalidUpdate, match="row 8 was removed already"):
        extend_index(tmp_path / "u.1", None, [8], tmp_path / "u.2")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["u", "u.1"]


def test_linking_after_updates_matches_a_fresh_project_with_the_final_records(
    tmp_path: Path,
    identities: Identities,
    schema: LinkageSchema,
    pair: EncodedPair,
    server: RunningServer,
    requester: LinkageClient,
    custodian: LinkageClient,
) -> None:
    updated_terms = keyed_agreement(identities, schema, "updated custodian")
    encodings_id = parse_signed(updated_terms).agreement.encodings_id
    parties = {"requester": requester, "custodian": custodian}
    project = requester.create_project(updated_terms).project_id
    custodian.upload(
        project, custodian_file(pair, tmp_path / "c.bin", slice(0, 2_000), encodings_id)
    )
    # Removed rows include true matches, of the first upload and of an earlier append.
    rng = np.random.default_rng(7)
    matched = pair.true_custodian_rows
    steps = [
        (slice(2_000, 2_500), rng.choice(matched[matched < 2_000], 60, replace=False)),
        (slice(2_500, 3_000), rng.choice(matched[(matched >= 2_000) & (matched < 2_500)], 20)),
        (None, rng.choice(np.arange(2_500, 3_000), 30, replace=False)),
    ]
    removed: set[int] = set()
    for version, (appended, rows) in enumerate(steps, 1):
        rows = np.setdiff1d(rows, list(removed))  # each row once
        path = None
        if appended is not None:
            path = custodian_file(pair, tmp_path / f"a{version}.bin", appended, encodings_id)
        total = 2_000 + 500 * min(version - 1, 2)
        receipt = custodian.update(project, total, path, rows.tolist())
        appended_count = 500 if appended is not None else 0
        assert (receipt.version, receipt.appended, receipt.removed) == (
            version,
            appended_count,
            len(rows),
        )
        assert receipt.first_row == total
        removed |= set(rows.tolist())
        assert receipt.records == total + appended_count - len(removed)
        entry = json.loads(receipt.receipt)
        assert entry["kind"] == "custodian_updated" and entry["party"] == "custodian"
        assert entry["details"]["removed"] == len(rows)
    kept = np.setdiff1d(np.arange(RECORDS), sorted(removed))
    index_dir = server.store.data_dir / INDEX_DIR
    upload = server.store.live_custodian_upload(project)
    assert upload is not None
    assert [p.name for p in index_dir.iterdir()] == [f"{upload.upload_id}.3"]

    batch = encodings_file(
        tmp_path / "batch.bin", keyed_rows(pair.requester, pair.requester_keys), encodings_id
    )
    found, decided = released_pairs(server, parties, project, batch)
    fresh = requester.create_project(
        keyed_agreement(identities, schema, "fresh custodian")
    ).project_id
    custodian.upload(fresh, custodian_file(pair, tmp_path / "final.bin", kept, encodings_id))
    expected, expected_decision = released_pairs(server, parties, fresh, batch)
    assert found == [(r, int(kept[c])) for r, c in expected]
    assert decided == expected_decision
    # Each run's audit entry names the custodian records it was matched against.
    assert _matched_against(server, project) == [(upload.upload_id, 3)]
    fresh_upload = server.store.live_custodian_upload(fresh)
    assert fresh_upload is not None
    assert _matched_against(server, fresh) == [(fresh_upload.upload_id, 0)]
    custodian_rows = {c for _, c in found}
    assert custodian_rows & set(range(2_000, RECORDS)) and not custodian_rows & removed
    assert len(found) > 1_000
    # The appended records and every index version go with the custodian's encodings.
    appended = [u.path for u in server.store.custodian_updates(upload.upload_id) if u.path]
    assert len(appended) == 2 and all(path.exists() for path in appended)
    assert server.store.delete_encodings(upload, "retention.encodings_ttl_seconds")
    assert not any(path.exists() for path in appended)
    assert not list(index_dir.glob(f"{upload.upload_id}*"))


def _matched_against(server: RunningServer, project: str) -> list[tuple[str, int]]:
    """(custodian upload, version) of each finished run of `project`, from its audit entry."""
    with closing(sqlite3.connect(server.store.data_dir / "blindlink.db")) as db:
        rows = db.execute(
            "SELECT details FROM audit_log WHERE project_id=? AND kind='run_finished'",
            (project,),
        ).fetchall()
    entries = [json.loads(details) for (details,) in rows]
    return [(e["custodian_upload_id"], e["custodian_version"]) for e in entries]


@pytest.fixture
def keyed_project(
    tmp_path: Path,
    identities: Identities,
    schema: LinkageSchema,
    pair: EncodedPair,
    requester: LinkageClient,
    custodian: LinkageClient,
) -> tuple[str, str]:
    """A project with blocking keys whose custodian uploaded 2,000 records and removed row 9:
    (project ID, its encodings ID)."""
    terms = signed_agreement(
        identities,
        schema,
        "refusals",
        blocking={"method": "keys", "keys": DEFAULT_SCHEMA_KEYS},
        max_records_per_upload=2_000,
    )
    encodings_id = parse_signed(terms).agreement.encodings_id
    project = requester.create_project(terms).project_id
    custodian.upload(
        project, custodian_file(pair, tmp_path / "c.bin", slice(0, 2_000), encodings_id)
    )
    custodian.update(project, 2_000, remove=[9])
    return project, encodings_id


REFUSED_UPDATES: list[tuple[str, dict[str, Any], grpc.StatusCode, str]] = [
    ("beyond", {"remove": [2_000]}, grpc.StatusCode.INVALID_ARGUMENT, "not a custodian row"),
    ("huge", {"remove": [2**64 - 1]}, grpc.StatusCode.INVALID_ARGUMENT, "not a custodian row"),
    ("twice", {"remove": [3, 3]}, grpc.StatusCode.INVALID_ARGUMENT, "named twice"),
    ("neither", {}, grpc.StatusCode.INVALID_ARGUMENT, "appends records or removes rows"),
    ("again", {"remove": [9]}, grpc.StatusCode.INVALID_ARGUMENT, "removed already"),
    ("stale", {"rows": 1_999, "remove": [1]}, grpc.StatusCode.FAILED_PRECONDITION, "1999"),
    ("limit", {"append": 2_001}, grpc.StatusCode.FAILED_PRECONDITION, "max_records_per_upload"),
]


@pytest.mark.parametrize(("what", "update", "code", "message"), REFUSED_UPDATES)
def test_a_refused_update_changes_nothing(
    tmp_path: Path,
    pair: EncodedPair,
    server: RunningServer,
    custodian: LinkageClient,
    keyed_project: tuple[str, str],
    what: str,
    update: dict[str, Any],
    code: grpc.StatusCode,
    message: str,
) -> None:
    project, encodings_id = keyed_project
    appended = None
    if "append" in update:
        rows = np.arange(update["append"]) % RECORDS
        appended = custodian_file(pair, tmp_path / "a.bin", rows, encodings_id)
    index_dir = server.store.data_dir / INDEX_DIR

    def state() -> tuple[object, ...]:
        return (
            sorted(p.name for p in index_dir.iterdir()),
            sorted(p.name for p in server.store.encodings_dir.iterdir()),
            [u.version for u in server.store.custodian_updates(_upload_id(server, project))],
        )

    before = state()
    with pytest.raises(ServerError) as refused:
        custodian.update(project, update.get("rows", 2_000), appended, update.get("remove", []))
    assert refused.value.code == code and message in refused.value.details, what
    assert state() == before


def test_the_requester_learns_nothing_of_updates_and_may_not_make_one(
    tmp_path: Path,
    server: RunningServer,
    requester: LinkageClient,
    custodian: LinkageClient,
    keyed_project: tuple[str, str],
) -> None:
    project, _ = keyed_project
    before = requester.status(project)
    custodian.update(project, 2_000, remove=[10, 11])
    assert requester.status(project) == before
    with pytest.raises(ServerError) as refused:
        requester.update(project, 2_000, remove=[12])
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    with closing(sqlite3.connect(server.store.data_dir / "blindlink.db")) as db:
        rows = db.execute(
            "SELECT details FROM audit_log WHERE project_id=? AND kind='custodian_updated'",
            (project,),
        ).fetchall()
    entries = [json.loads(details) for (details,) in rows]
    assert [e["removed"] for e in entries] == [1, 2]
    data_dir = server.store.data_dir
    assert verify_data_dir(data_dir, server.public_key, in_use=True).problems == []
    with closing(sqlite3.connect(data_dir / "blindlink.db")) as db:
        db.execute("UPDATE custodian_updates SET removed_rows = x'' WHERE version = 2")
        db.commit()
    problems = verify_data_dir(data_dir, server.public_key, in_use=True).problems
    assert len(problems) == 1 and "custodian_updated audit entry" in problems[0]
    assert all(
        set(e)
        == {"update_id", "upload_id", "version", "appended", "removed", "removed_rows_sha256"}
        for e in entries
    )


def test_a_project_without_blocking_keys_refuses_updates(
    identities: Identities,
    schema: LinkageSchema,
    tmp_path: Path,
    requester: LinkageClient,
    custodian: LinkageClient,
    pair: EncodedPair,
) -> None:
    terms = signed_agreement(identities, schema, "no keys")
    project = requester.create_project(terms).project_id
    encodings_id = parse_signed(terms).agreement.encodings_id
    custodian.upload(project, encodings_file(tmp_path / "c.bin", pair.custodian, encodings_id))
    with pytest.raises(ServerError) as refused:
        custodian.update(project, RECORDS, remove=[1])
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "need an agreement with blocking keys" in refused.value.details


def _upload_id(server: RunningServer, project: str) -> str:
    upload = server.store.live_custodian_upload(project)
    assert upload is not None
    return upload.upload_id


launch_fixture = pytest.fixture(name="launch")(server_launcher)


@pytest.fixture(scope="module")
def files_for_api(tmp_path_factory: pytest.TempPathFactory) -> GeneratedFiles:
    return generate_datasets(tmp_path_factory.mktemp("api"), 300, 0.5, seed=12)


def test_a_server_killed_during_an_update_keeps_the_version_before_it_and_recovers(
    tmp_path: Path, identities: Identities, schema: LinkageSchema, launch: Callable[..., Any]
) -> None:
    terms = signed_agreement(
        identities,
        schema,
        "killed while updating",
        blocking={"method": "keys", "keys": [[{"field": "surname"}], [{"field": "postcode"}]]},
        max_records_per_upload=KILL_RECORDS,
    )
    encodings_id = parse_signed(terms).agreement.encodings_id
    terms_bytes = parse_signed(terms).agreement.bit_length // 8
    rng = np.random.default_rng(8)
    encodings = rng.integers(0, 256, (KILL_RECORDS, terms_bytes), dtype=np.uint8)
    keys = rng.integers(1, KILL_RECORDS // 5, (KILL_RECORDS, 2)).astype(np.uint64)
    source = encodings_file(tmp_path / "c.bin", keyed_rows(encodings, keys), encodings_id)
    copied = np.sort(rng.choice(KILL_RECORDS, 200, replace=False))
    removed = copied[:50].tolist()
    batch = encodings_file(
        tmp_path / "r.bin", keyed_rows(encodings[copied], keys[copied]), encodings_id
    )
    server = launch().start()
    index_dir = server.data_dir / INDEX_DIR
    with server.client("requester") as requester, server.client("custodian") as custodian:
        project = requester.create_project(terms).project_id
        upload_id = custodian.upload(project, source).upload_id
        assert wait_until(lambda: (index_dir / upload_id).exists())
        failures: list[BaseException] = []

        def update() -> None:
            try:
                custodian.update(project, KILL_RECORDS, remove=removed)
            except ServerError as exc:
                failures.append(exc)

        updating = threading.Thread(target=update)
        updating.start()
        assert wait_until(lambda: any(p.name.endswith(PARTIAL_SUFFIX) for p in index_dir.iterdir()))
        server.kill()
        updating.join()
    assert failures and not (index_dir / f"{upload_id}.1").exists()

    # As if killed after the new version was in place but before the update was committed.
    shutil.copytree(index_dir / upload_id, index_dir / f"{upload_id}.1")
    server.start()
    assert [p.name for p in index_dir.iterdir()] == [upload_id]
    assert server.rows("SELECT count(*) FROM custodian_updates") == [(0,)]

    def matched(run_id: str) -> list[int]:
        rows = server.rows(
            "SELECT custodian_row FROM matches WHERE run_id=? AND status=0 ORDER BY 1", (run_id,)
        )
        return [row for (row,) in rows]

    with server.client("requester") as requester, server.client("custodian") as custodian:
        run_id = requester.upload(project, batch).run_id
        assert requester.wait(project, run_id).state == pb.RUN_STATE_DONE
        assert matched(run_id) == copied.tolist()
        assert custodian.update(project, KILL_RECORDS, remove=removed).version == 1
    # As if killed after the commit but before the version before it was removed.
    server.kill()
    shutil.copytree(index_dir / f"{upload_id}.1", index_dir / upload_id)
    server.start()
    assert [p.name for p in index_dir.iterdir()] == [f"{upload_id}.1"]
    with server.client("requester") as requester:
        run_id = requester.upload(project, batch, threshold=0.81).run_id
        assert requester.wait(project, run_id).state == pb.RUN_STATE_DONE
        assert matched(run_id) == copied[50:].tolist()
    server.terminate()


def test_the_cli_appends_encoded_records_removes_rows_and_extends_the_id_map(
    cli: Cli, tmp_path: Path
) -> None:
    files = generate_datasets(tmp_path / "data", 400, 0.5, seed=11)
    agreement = cli.signed_agreement(
        "cli updates",
        "--blocking",
        json.dumps({"method": "keys", "keys": DEFAULT_SCHEMA_KEYS}),
        "--custodian-release",
        "own_rows",
    )
    with open(files.custodian, encoding="utf-8") as f:
        header, *records = f.readlines()
    first, later = tmp_path / "first.csv", tmp_path / "later.csv"
    first.write_text(header + "".join(records[:200]), encoding="utf-8")
    later.write_text(header + "".join(records[200:]), encoding="utf-8")
    secret = tmp_path / "secret"
    cli("secret", "new", "--out", str(secret))
    project = cli.party("requester", "project", "create", "--agreement", str(agreement)).strip()

    def encode(source: Path, out: Path, *id_map: str) -> None:
        cli("encode", str(source), "--secret-file", str(secret), "--agreement", str(agreement),
            "--out", str(out), *id_map)  # fmt: skip

    id_map = tmp_path / "custodian.json"
    encode(first, tmp_path / "custodian.bin", "--id-map", str(id_map))
    cli.party("custodian", "upload", "--project", project, str(tmp_path / "custodian.bin"))
    encode(later, tmp_path / "later.bin")  # its ID map: later.bin.idmap.json
    ids = json.loads(id_map.read_text())["ids"]
    rows = tmp_path / "rows.txt"
    rows.write_text("# rows to remove\n0\n\n7\n", encoding="utf-8")
    receipt = tmp_path / "receipt.json"
    out = cli.party(
        "custodian", "update", "--project", project, "--id-map", str(id_map),
        "--append", str(tmp_path / "later.bin"), "--remove", str(rows), "--receipt", str(receipt),
    )  # fmt: skip
    assert "version 1; 200 records appended as rows 200 to 399, 2 removed; 398 records" in out
    assert json.loads(receipt.read_text())["kind"] == "custodian_updated"
    extended = json.loads(id_map.read_text())["ids"]
    later_ids = json.loads((tmp_path / "later.bin.idmap.json").read_text())["ids"]
    assert extended == ids + later_ids
    # Sent again (its receipt lost, say), the removal is refused and changes nothing.
    again = ["update", "--project", project, "--id-map", str(id_map), "--remove", str(rows)]
    tls = tls_args(cli.identities, "custodian")
    args = [*again, "--server", cli.address, "--party", "custodian", *tls]
    assert main(args) != 0
    assert "row 0 was removed already; nothing was changed" in cli.capsys.readouterr().err
    encode(files.requester, tmp_path / "requester.bin")
    cli.party("requester", "upload", "--project", project, str(tmp_path / "requester.bin"))
    assert "done" in cli.party("requester", "status", "--project", project, "--watch")
    matches = tmp_path / "matches.csv"
    cli.party("custodian", "results", "--project", project, "--id-map", str(id_map),
              "--out", str(matches))  # fmt: skip
    with open(matches, encoding="utf-8") as f:
        matched = {row[0] for row in csv.reader(f)}
    assert matched & set(later_ids) and not matched & {ids[0], ids[7]}


def test_the_python_client_updates_the_custodian_and_maps_releases_to_its_ids(
    files_for_api: GeneratedFiles, address: str, identities: Identities, make_agreement: Any
) -> None:
    terms = make_agreement(
        "python updates",
        blocking={"method": "keys", "keys": DEFAULT_SCHEMA_KEYS},
        custodian_release="own_rows",
    )
    agreement = parse_signed(terms).agreement
    secret = b"a shared secret of the two parties"
    everyone = blindlink.encode(
        files_for_api.custodian, default_schema_path(), secret, agreement=agreement
    )
    requester_records = blindlink.encode(
        files_for_api.requester, default_schema_path(), secret, agreement=agreement
    )
    first = Encoded(everyone.records[:150], everyone.ids[:150], everyone.key_count, everyone.origin)
    later = Encoded(everyone.records[150:], everyone.ids[150:], everyone.key_count, everyone.origin)
    with (
        Client(address, "requester", identities.tls("requester")) as requester,
        Client(address, "custodian", identities.tls("custodian")) as custodian,
    ):
        project = requester.create_project(terms)
        custodian.upload(project, first)
        held = custodian.update(project, first, append=later, remove=[3])
        assert held.ids == everyone.ids and np.array_equal(held.records, everyone.records)
        run_id = requester.upload(project, requester_records)
        requester.wait(project, run_id)
        matched = set(custodian.results(project, run_id, held).ids)
    assert matched & set(later.ids) and first.ids[3] not in matched
