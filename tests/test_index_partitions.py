"""The custodian index partitioned by key value across Dask workers: each partition holds whole
key groups and only its own, a batch matched on the partitions of a LocalCluster is decided
exactly as on one machine, and a server with a Dask scheduler serves batches that way."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import replace
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
from support.waiting import wait_until

from blindlink.agreement.model import default_rule
from blindlink.agreement.signing import parse_signed
from blindlink.benchmarking.data import EncodedPair, encoded_pair
from blindlink.encoding.schema import LinkageSchema
from blindlink.errors import BlindlinkError
from blindlink.index.build import build_index
from blindlink.index.custodian import CustodianIndex
from blindlink.index.layout import MANIFEST
from blindlink.index.partitions import (
    MEMBERS,
    PARTITIONS_DIR,
    PartitionedIndex,
    build_partition,
    gather_on_partition,
    partition_of,
)
from blindlink.matching.blocking import custodian_key_counts
from blindlink.matching.decision import link
from blindlink.matching.executors import DaskExecutor, SerialExecutor
from blindlink.matching.rules import DecisionRule, FixedThreshold
from blindlink.server.runs import MatchingSettings
from blindlink.store.directory import INDEX_DIR

distributed = pytest.importorskip("dask.distributed")

CALIBRATED = default_rule([])  # what `agreement new` agrees for unhardened encodings
RECORDS = 3_000
TOP = 2**64 - 1


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> EncodedPair:
    """Generated people with the default schema's blocking keys, half of them in both parties."""
    return encoded_pair(tmp_path_factory.mktemp("partitions"), RECORDS, 0.5, 3, BLOCKING)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as local:
        yield local


def test_key_values_split_into_equal_ranges_in_value_order() -> None:
    parts = 3
    edges = [-(-(p << 32) // parts) << 32 for p in range(parts)]  # each partition's first
    values = np.array(
        [1, *(e - 1 for e in edges[1:]), *edges[1:], 2**63, TOP - 1, TOP], dtype=np.uint64
    )
    found = partition_of(values, parts)
    assert found.tolist() == [0, 0, 1, 1, 2, 1, 2, 2]
    assert np.all(np.diff(partition_of(np.sort(values), parts)) >= 0)


def test_each_partition_holds_its_key_values_groups_whole_and_no_others(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    encodings = rng.integers(0, 256, (2_000, 16), dtype=np.uint8)
    # Few values per key, so that groups are large; 0 (no key) in about a third of the records;
    # the largest value there is, which belongs to the last partition.
    keys = rng.integers(0, 40, (2_000, 3)).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    keys[:5, 0] = TOP
    source = encodings_file(tmp_path / "c.bin", keyed_rows(encodings, keys), "ab" * 32)
    build_index(source, "u", 3, tmp_path / "u")
    parts = 3
    seen: list[set[int]] = [set() for _ in range(3)]
    for part in range(parts):
        build_partition(tmp_path / "u", part, parts, tmp_path / str(part))
        partition = CustodianIndex(tmp_path / str(part))
        members = np.load(tmp_path / str(part) / MEMBERS)
        assert np.array_equal(members, np.unique(members))
        assert partition.manifest.upload_id == "u" and partition.manifest.records == len(members)
        assert np.array_equal(partition.encodings, encodings[members])
        assert np.array_equal(partition.keys, keys[members])
        for key, postings in enumerate(partition.postings):
            values = postings.values.tolist()
            assert set(partition_of(postings.values, parts).tolist()) <= {part}
            assert not seen[key] & set(values)
            seen[key] |= set(values)
            for value in values:
                rows = members[
                    postings.rows_in(*postings.ranges(np.array([value], dtype=np.uint64)))
                ]
                assert rows.tolist() == np.flatnonzero(keys[:, key] == value).tolist()
    for key in range(3):
        assert seen[key] == set(keys[:, key].tolist()) - {0}
    assert TOP in seen[0]


def test_a_partition_rebuilt_at_the_same_path_is_read_afresh(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    keys = rng.integers(1, 2**63, (2, 100, 2)).astype(np.uint64)
    encodings = rng.integers(0, 256, (100, 16), dtype=np.uint8)
    partition = tmp_path / "partition"
    for number, custodian_keys in enumerate(keys):
        rows = keyed_rows(encodings, custodian_keys)
        source = encodings_file(tmp_path / f"c{number}.bin", rows, "ab" * 32)
        build_index(source, f"u{number}", 2, tmp_path / f"u{number}")
        shutil.rmtree(partition, ignore_errors=True)
        build_partition(tmp_path / f"u{number}", 0, 1, partition)
        found, found_keys, counts = gather_on_partition(str(partition), custodian_keys[:5])
        assert found.tolist() == [0, 1, 2, 3, 4]
        assert np.array_equal(found_keys, custodian_keys[:5])
        assert np.array_equal(counts, custodian_key_counts(custodian_keys[:5], custodian_keys))


def test_a_batch_matched_on_the_partitions_is_decided_as_on_one_machine(
    tmp_path: Path, pair: EncodedPair, cluster: Any
) -> None:
    build_index(pair.directory / "custodian.bin", "u", len(BLOCKING.keys), tmp_path / "u")
    index = CustodianIndex(tmp_path / "u")
    for parts in (None, 3):  # one partition per worker, and more partitions than workers
        partitioned = PartitionedIndex(index, cluster.scheduler_address, parts)
        for rows in (slice(None), slice(0, 300)):
            requester, keys = pair.requester[rows], pair.requester_keys[rows]
            local = index.batch(requester, keys)
            batch = partitioned.batch(requester, keys)
            assert batch.shared.custodian.nbytes == 0  # the encodings stay on the partitions
            assert np.array_equal(batch.custodian_rows, local.custodian_rows)
            assert np.array_equal(batch.shared.custodian_keys, local.shared.custodian_keys)
            # Each value's count comes from its partition's postings, whole.
            counts = custodian_key_counts(keys, pair.custodian_keys)
            assert np.array_equal(batch.shared.key_counts, counts)
            assert batch.executor is not None
            # Setting kin aside reads the encodings of the candidates from the index.
            kin = replace(CALIBRATED, custodian_duplicates=True)
            for rule in (CALIBRATED, DecisionRule(FixedThreshold(0.8)), kin):
                expected = local.in_custodian_rows(
                    link(local.shared, rule, SerialExecutor(), 1, BLOCKING)
                )
                found = batch.in_custodian_rows(
                    link(
                        batch.shared,
                        rule,
                        batch.executor,
                        1,
                        BLOCKING,
                        custodian=batch.custodian_encodings,
                    )
                )
                assert_same(found, expected)
            assert expected.summary().matches > 100
        built = index.directory / PARTITIONS_DIR / str(parts or 2)
        assert sorted(p.name for p in built.iterdir()) == [str(p) for p in range(parts or 2)]
    # Only the server's user can read them.
    root = index.directory / PARTITIONS_DIR
    for path in [root, *root.rglob("*")]:
        assert path.stat().st_mode & 0o077 == 0, path
    # Only the latest partition count is kept, and it is kept whatever the number of workers.
    assert [p.name for p in root.iterdir()] == ["3"]
    assert PartitionedIndex(index, cluster.scheduler_address).prepare().parts == 3


def test_a_cluster_without_workers_is_named_in_a_clear_error(
    tmp_path: Path, pair: EncodedPair
) -> None:
    build_index(pair.directory / "custodian.bin", "u", len(BLOCKING.keys), tmp_path / "u")
    index = CustodianIndex(tmp_path / "u")
    with (
        distributed.LocalCluster(n_workers=0, dashboard_address=":0") as empty,
        pytest.raises(BlindlinkError, match="has no workers"),
    ):
        PartitionedIndex(index, empty.scheduler_address).batch(
            pair.requester[:10], pair.requester_keys[:10]
        )


def test_a_server_with_a_dask_scheduler_serves_batches_from_the_partitions(
    tmp_path: Path,
    identities: Identities,
    schema: LinkageSchema,
    pair: EncodedPair,
    cluster: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="blindlink.server.runs")
    agreement = keyed_agreement(identities, schema, "partitioned index")
    terms = parse_signed(agreement).agreement
    limits = MatchingSettings.local().limits
    dask = MatchingSettings(DaskExecutor(cluster.scheduler_address), 1, limits)
    server = serve(tmp_path / "data", identities, dask)
    parties = clients(server, identities)
    try:
        project = parties["requester"].create_project(agreement).project_id
        upload_id = parties["custodian"].upload(project, pair.directory / "custodian.bin").upload_id
        # The index is partitioned when the custodian's upload commits, before any batch.
        partitions = tmp_path / "data" / INDEX_DIR / upload_id / PARTITIONS_DIR / "2"
        assert wait_until(
            lambda: all((partitions / str(p) / MANIFEST).exists() for p in range(2)), every=0.05
        ), "the index was not partitioned"
        for number, rows in enumerate((slice(0, 1_000), slice(1_000, 1_500))):
            records = keyed_rows(pair.requester[rows], pair.requester_keys[rows])
            path = encodings_file(tmp_path / f"batch{number}.bin", records, terms.encodings_id)
            expected = expected_batch(pair, rows, terms.rule_for_run(0.0))
            assert run_batch(server, parties, project, path) == expected
            assert len(expected[0]) > 100
        assert sorted(p.name for p in partitions.parent.iterdir()) == ["2"]
        done = [r.getMessage() for r in caplog.records if " done on " in r.getMessage()]
        assert len(done) == 2
        assert all("2 index partitions on the Dask cluster" in line for line in done)
    finally:
        for client in parties.values():
            client.close()
        server.stop(grace=1)
