"""The standing custodian index: built atomically from the custodian's upload, its postings
list exactly the custodian records of each key value, runs through it decide exactly as runs
over the whole custodian did, projects from before indexes are served, and a half-built index
is discarded and rebuilt."""

from __future__ import annotations

import gc
import json
import shutil
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Identities
from support.encodings import encodings_file, keyed_rows
from support.index import (
    BLOCKING,
    assert_same,
    clients,
    expected_batch,
    keyed_agreement,
    run_batch,
    serve,
)
from support.server_process import server_launcher, signed_agreement

from blindlink._generated import linkage_pb2 as pb
from blindlink.agreement.model import default_rule
from blindlink.agreement.signing import parse_signed
from blindlink.benchmarking.data import EncodedPair, encoded_pair
from blindlink.encoding.encodings_file import read_header
from blindlink.encoding.schema import LinkageSchema
from blindlink.index.build import build_index
from blindlink.index.custodian import CustodianIndex
from blindlink.index.directory import CustodianIndexes
from blindlink.index.layout import FORMAT_VERSION, MANIFEST, PARTIAL_SUFFIX, IndexUnusable
from blindlink.matching.blocking import custodian_key_counts
from blindlink.matching.decision import link
from blindlink.matching.engine import SharedEncodings
from blindlink.matching.executors import SerialExecutor
from blindlink.matching.rules import DecisionRule, FixedThreshold
from blindlink.store.directory import INDEX_DIR
from blindlink.store.reports import key_group_reports, open_read_only
from blindlink.store.sqlite import UploadRecord

CALIBRATED = default_rule([])  # what `agreement new` agrees for unhardened encodings
RECORDS = 3_000
KILL_RECORDS = 500_000  # about half a second to index


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> EncodedPair:
    """Generated people with the default schema's blocking keys, half of them in both parties."""
    return encoded_pair(tmp_path_factory.mktemp("standing"), RECORDS, 0.5, 3, BLOCKING)


def test_the_index_holds_the_encodings_and_every_key_values_records(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    encodings = rng.integers(0, 256, (2_000, 16), dtype=np.uint8)
    # Few values per key, so that groups are large; 0 (no key) in about a third of the records.
    keys = rng.integers(0, 40, (2_000, 3)).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    source = encodings_file(tmp_path / "c.bin", keyed_rows(encodings, keys), "ab" * 32)
    built = build_index(source, "upload-1", 3, tmp_path / "upload-1")

    index = CustodianIndex(tmp_path / "upload-1")
    assert index.manifest == built
    assert (built.records, built.encoding_bytes, built.key_count) == (2_000, 16, 3)
    assert built.format_version == FORMAT_VERSION and built.upload_id == "upload-1"
    assert np.array_equal(index.encodings, encodings) and np.array_equal(index.keys, keys)
    for key, postings in enumerate(index.postings):
        assert postings.values.tolist() == sorted(set(keys[:, key].tolist()) - {0})
        for value in postings.values:
            rows = postings.rows_in(*postings.ranges(np.array([value], dtype=np.uint64)))
            assert rows.tolist() == np.flatnonzero(keys[:, key] == value).tolist()
    # A batch's candidates: every custodian record sharing any key value with it, in order.
    batch = keys[[7, 1_500]].copy()
    batch[1, 2] = 12345  # a value no custodian record has
    expected = np.flatnonzero(
        ((keys == batch[:, None, :]) & (batch[:, None, :] != 0)).any(2).any(0)
    )
    assert index.candidate_rows(batch).tolist() == expected.tolist()
    # The custodian's count of each of the batch's key values, read from the postings, is the
    # one counted among its records (0 for a value it lacks, and for no value).
    counts = index.look_up(batch)[1]
    assert counts.tolist() == custodian_key_counts(batch, keys).tolist()
    assert counts[1, 2] == 0 and counts[0].min() > 0
    # Only the server's user can read it.
    for path in [tmp_path / "upload-1", *(tmp_path / "upload-1").iterdir()]:
        assert path.stat().st_mode & 0o077 == 0, path


def test_a_batch_decided_through_the_index_is_decided_as_against_the_whole_custodian(
    tmp_path: Path, pair: EncodedPair
) -> None:
    build_index(pair.directory / "custodian.bin", "u", len(BLOCKING.keys), tmp_path / "u")
    index = CustodianIndex(tmp_path / "u")
    for rows in (slice(None), slice(0, 300)):
        requester, keys = pair.requester[rows], pair.requester_keys[rows]
        whole = SharedEncodings.of(requester, pair.custodian, keys, pair.custodian_keys)
        batch = index.batch(requester, keys)
        assert np.array_equal(batch.shared.key_counts, whole.key_counts)
        if rows != slice(None):  # a small batch reads a small part of the custodian
            assert len(batch.custodian_rows) < RECORDS / 4
        for rule in (CALIBRATED, DecisionRule(FixedThreshold(0.8))):
            expected = link(whole, rule, SerialExecutor(), 1, BLOCKING)
            found = batch.in_custodian_rows(link(batch.shared, rule, SerialExecutor(), 1, BLOCKING))
            assert_same(found, expected)
        assert expected.summary().matches > 100


def test_a_batch_sharing_no_key_value_with_the_custodian_reads_none_of_its_records(
    tmp_path: Path, pair: EncodedPair
) -> None:
    build_index(pair.directory / "custodian.bin", "u", len(BLOCKING.keys), tmp_path / "u")
    keys = pair.requester_keys[:50] ^ np.uint64(1)  # values no custodian record has
    batch = CustodianIndex(tmp_path / "u").batch(pair.requester[:50], keys)
    assert len(batch.custodian_rows) == 0
    decisions = batch.in_custodian_rows(
        link(batch.shared, CALIBRATED, SerialExecutor(), 1, BLOCKING)
    )
    whole = SharedEncodings.of(pair.requester[:50], pair.custodian, keys, pair.custodian_keys)
    assert_same(decisions, link(whole, CALIBRATED, SerialExecutor(), 1, BLOCKING))


def test_runs_share_an_opened_index_until_its_directory_is_removed_or_rebuilt(
    tmp_path: Path, pair: EncodedPair
) -> None:
    source = pair.directory / "custodian.bin"
    header = read_header(source)
    upload = UploadRecord(
        "u", "p", "custodian", RECORDS, header.bit_length, header.content_sha256, source, 0.0
    )
    keys = len(BLOCKING.keys)
    indexes = CustodianIndexes(tmp_path)
    first = indexes.ensure(upload, keys)
    assert indexes.open(upload, keys) is first  # kept open: the pages runs read stay mapped
    # Removed (with its encodings, say): closed, so that its files are freed.
    shutil.rmtree(tmp_path / "u")
    indexes.let_go_of_removed()
    closed = weakref.ref(first)
    del first
    gc.collect()
    assert closed() is None
    with pytest.raises(IndexUnusable):
        indexes.open(upload, keys)
    # Rebuilt under the same name: opened afresh.
    rebuilt = indexes.ensure(upload, keys)
    shutil.rmtree(tmp_path / "u")
    build_index(source, "u", keys, tmp_path / "u")
    again = indexes.open(upload, keys)
    assert again is not rebuilt and indexes.open(upload, keys) is again
    # Retired: closed too.
    indexes.retire("u", 0)
    closed = weakref.ref(again)
    del again, rebuilt
    gc.collect()
    assert closed() is None


launch_fixture = pytest.fixture(name="launch")(server_launcher)


def test_a_server_killed_while_building_the_index_rebuilds_it_and_serves_the_batch(
    tmp_path: Path, identities: Identities, schema: LinkageSchema, launch: Any
) -> None:
    agreement = signed_agreement(
        identities,
        schema,
        "killed while indexing",
        blocking={"method": "keys", "keys": [[{"field": "surname"}], [{"field": "postcode"}]]},
        max_records_per_upload=KILL_RECORDS,
    )
    terms = parse_signed(agreement).agreement
    rng = np.random.default_rng(4)
    encodings = rng.integers(0, 256, (KILL_RECORDS, terms.bit_length // 8), dtype=np.uint8)
    # About five records per key value; a batch of copies of 200 custodian records.
    keys = rng.integers(1, KILL_RECORDS // 5, (KILL_RECORDS, 2)).astype(np.uint64)
    custodian_file = encodings_file(
        tmp_path / "c.bin", keyed_rows(encodings, keys), terms.encodings_id
    )
    copied = np.sort(rng.choice(KILL_RECORDS, 200, replace=False))
    batch = encodings_file(
        tmp_path / "r.bin", keyed_rows(encodings[copied], keys[copied]), terms.encodings_id
    )
    server = launch().start()
    index_dir = server.data_dir / INDEX_DIR
    with server.client("requester") as requester, server.client("custodian") as custodian:
        project = requester.create_project(agreement).project_id
        upload_id = custodian.upload(project, custodian_file).upload_id
        deadline = time.monotonic() + 30
        while not any(p.name.endswith(PARTIAL_SUFFIX) for p in index_dir.iterdir()):
            assert time.monotonic() < deadline and not (index_dir / upload_id).exists()
            time.sleep(0.002)
    server.kill()
    assert not (index_dir / upload_id).exists()  # half-built: under its temporary name only

    server.start()
    assert list(index_dir.iterdir()) == []  # the half-built index was removed at start
    with server.client("requester") as requester:
        run_id = requester.upload(project, batch).run_id
        assert requester.wait(project, run_id).state == pb.RUN_STATE_DONE
    matched = server.rows(
        "SELECT requester_row, custodian_row FROM matches WHERE run_id=? AND status=0 "
        "ORDER BY requester_row",
        (run_id,),
    )
    assert matched == list(enumerate(copied.tolist()))
    assert [p.name for p in index_dir.iterdir()] == [upload_id]
    assert CustodianIndex(index_dir / upload_id).manifest.records == KILL_RECORDS
    server.terminate()


def test_a_server_builds_the_index_at_the_custodians_upload_and_serves_projects_without_one(
    tmp_path: Path, identities: Identities, schema: LinkageSchema, pair: EncodedPair
) -> None:
    agreement = keyed_agreement(identities, schema, "standing index")
    terms = parse_signed(agreement).agreement
    batches = []
    for number, rows in enumerate((slice(0, 1_000), slice(1_000, 2_000), slice(2_000, 3_000))):
        records = keyed_rows(pair.requester[rows], pair.requester_keys[rows])
        path = encodings_file(tmp_path / f"batch{number}.bin", records, terms.encodings_id)
        batches.append((path, expected_batch(pair, rows, terms.rule_for_run(0.0))))
    data_dir = tmp_path / "data"
    index_dir = data_dir / INDEX_DIR

    server = serve(data_dir, identities)
    parties = clients(server, identities)
    try:
        project = parties["requester"].create_project(agreement).project_id
        custodian = parties["custodian"].upload(project, pair.directory / "custodian.bin")
        index = index_dir / custodian.upload_id
        deadline = time.monotonic() + 30
        while not index.exists():
            assert time.monotonic() < deadline, "no index was built"
            time.sleep(0.05)
        manifest = json.loads((index / MANIFEST).read_text())
        assert manifest["upload_id"] == custodian.upload_id
        assert manifest["content_sha256"] == custodian.content_sha256.hex()
        built_at = (index / MANIFEST).stat().st_mtime_ns
        path, expected = batches[0]
        assert run_batch(server, parties, project, path) == expected
        assert expected[1]["rule"].startswith("calibrated on")  # a fitted model decided
        assert (index / MANIFEST).stat().st_mtime_ns == built_at  # read, not rebuilt
    finally:
        for client in parties.values():
            client.close()
        server.stop(grace=1)

    # As after an upgrade: the project has no index, and a crash left one half-built.
    shutil.rmtree(index)
    partial = index_dir / f".{custodian.upload_id}.0123{PARTIAL_SUFFIX}"
    partial.mkdir()
    (partial / "encodings.npy").write_bytes(b"half")
    server = serve(data_dir, identities)
    parties = clients(server, identities)
    try:
        assert not partial.exists() and not index.exists()
        path, expected = batches[1]
        assert run_batch(server, parties, project, path) == expected
        assert [p.name for p in index_dir.iterdir()] == [custodian.upload_id]
        # An index that does not match its manifest is rebuilt, not read.
        np.save(index / "keys.npy", np.zeros((5, 4), dtype=np.uint64))
        path, expected = batches[2]
        assert run_batch(server, parties, project, path) == expected
        assert CustodianIndex(index).keys.shape == (RECORDS, len(BLOCKING.keys))
        # The operator's key group report reads the index (not the custodian's encodings
        # file), and reports what the whole custodian's keys give.
        upload = server.store.live_custodian_upload(project)
        assert upload is not None and upload.path is not None
        conn = open_read_only(data_dir)
        try:
            upload.path.rename(tmp_path / "custodian.bin")
            from_index = key_group_reports(conn, data_dir, project)
            (tmp_path / "custodian.bin").rename(upload.path)
            index.rename(tmp_path / "index")
            from_file = key_group_reports(conn, data_dir, project)
            (tmp_path / "index").rename(index)
        finally:
            conn.close()
        assert len(from_index) == 3 and all(report.loads for report in from_index)
        assert from_index == from_file
        # The index goes with the custodian's encodings, as retention deletes them.
        assert server.store.delete_encodings(upload, "retention.encodings_ttl_seconds")
        assert not index.exists()
    finally:
        for client in parties.values():
            client.close()
        server.stop(grace=1)
