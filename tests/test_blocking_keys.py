"""Keyed blocking keys: what the parties compute, what the server compares, and how the agreement
holds both to the same keys."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import Cli, RunningServer
from support.server_state import assert_unchanged, snapshot

from blindlink.client.linkage_client import LinkageClient, ServerError
from blindlink.encoding.blocking_keys import BlockingKeyMaker
from blindlink.encoding.encoder import encode_csv
from blindlink.encoding.encodings_file import read_payload
from blindlink.encoding.id_map import read_id_map
from blindlink.encoding.schema import LinkageSchema
from blindlink.errors import SchemaError
from blindlink.evaluation import membership_quality, read_truth
from blindlink.matching.blocking import KeyBlocking, band_pairs
from blindlink.matching.engine import (
    MatchingAborted,
    MatchingLimits,
    SharedEncodings,
    find_candidates,
    planned_comparisons,
)
from blindlink.matching.executors import LocalPoolExecutor, SerialExecutor
from blindlink.matching.kernel import pair_dice, popcounts
from blindlink.synthetic import generate_datasets

SECRET = b"blocking keys test secret"
NAME_AND_BIRTH = [[{"field": "surname"}, {"field": "date_of_birth"}]]
THREE_KEYS = [
    [{"field": "given_name"}, {"field": "surname"}],
    [{"field": "surname", "prefix": 3}, {"field": "date_of_birth"}],
    [{"field": "street_address"}, {"field": "postcode"}],
]


def person(**values: str) -> list[str]:
    fields = {
        "id": "1",
        "given_name": "Ann",
        "surname": "Lee",
        "date_of_birth": "1971-02-03",
        "sex": "F",
        "street_address": "1 Main Road",
        "city": "Ashvale",
        "postcode": "2000",
    }
    return list((fields | values).values())


def keys_of(rows: list[list[str]], keys: list, schema: LinkageSchema, secret: bytes = SECRET):
    return BlockingKeyMaker(KeyBlocking.from_document(keys), schema, secret).make(rows)


def test_equal_values_give_equal_keys_after_normalising(schema: LinkageSchema) -> None:
    keys = keys_of(
        [person(), person(id="2", surname=" LEE "), person(id="3", surname="Le")],
        NAME_AND_BIRTH,
        schema,
    )
    assert keys.dtype == np.uint64 and keys.shape == (3, 1)
    assert keys[0, 0] == keys[1, 0] != 0
    assert keys[2, 0] != keys[0, 0]


def test_a_prefix_keeps_only_the_first_characters(schema: LinkageSchema) -> None:
    prefix = [[{"field": "surname", "prefix": 3}]]
    keys = keys_of(
        [person(surname="Leeson"), person(surname="Leeds"), person(surname="Lea")], prefix, schema
    )
    assert keys[0, 0] == keys[1, 0] != keys[2, 0]


def test_a_missing_field_gives_no_key(schema: LinkageSchema) -> None:
    keys = keys_of([person(date_of_birth=""), person()], THREE_KEYS, schema)
    assert keys[0, 1] == 0 and keys[1, 1] != 0
    assert keys[0, 0] == keys[1, 0] != 0


def test_keys_depend_on_the_secret_and_on_the_combination(schema: LinkageSchema) -> None:
    rows = [person()]
    assert (
        keys_of(rows, NAME_AND_BIRTH, schema)[0, 0]
        != keys_of(rows, NAME_AND_BIRTH, schema, b"another secret")[0, 0]
    )
    one = [[{"field": "surname"}]]
    same_value_twice = [[{"field": "surname"}], [{"field": "surname", "prefix": 50}]]
    both = keys_of(rows, same_value_twice, schema)
    assert both[0, 0] != both[0, 1]
    assert both[0, 0] == keys_of(rows, one, schema)[0, 0]


def test_a_key_on_an_unknown_field_is_refused(schema: LinkageSchema) -> None:
    with pytest.raises(SchemaError, match="blocking key 1 names the field 'surnmae'"):
        keys_of([person()], [[{"field": "surnmae"}]], schema)


def test_band_pairs_in_slices_are_all_pairs_sharing_a_key() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 6, 300), rng.integers(0, 6, 250)
    expected = {(i, j) for i in range(len(a)) for j in range(len(b)) if a[i] == b[j]}
    for slice_pairs in (1, 97, 10**9):
        slices = list(band_pairs(a, b, slice_pairs))
        found = [
            (int(i), int(j))
            for rows_a, rows_b in slices
            for i, j in zip(rows_a, rows_b, strict=True)
        ]
        assert len(found) == len(expected) and set(found) == expected
        if slice_pairs == 97:
            assert len(slices) > 10


def test_key_blocking_compares_exactly_the_pairs_that_share_a_key() -> None:
    rng = np.random.default_rng(11)
    requester = rng.integers(0, 256, (400, 64), dtype=np.uint8)
    custodian = requester[rng.permutation(400)[:300]].copy()
    custodian[:, :4] ^= rng.integers(0, 256, (300, 4), dtype=np.uint8)  # near, not equal
    keys_r = rng.integers(0, 40, (400, 2)).astype(np.uint64)  # 0: no key
    keys_c = rng.integers(0, 40, (300, 2)).astype(np.uint64)
    shared = SharedEncodings.of(requester, custodian, keys_r, keys_c)
    blocking = KeyBlocking.from_document(THREE_KEYS[:2])

    reports: list[tuple[int, int]] = []
    serial = find_candidates(
        shared, 0.3, SerialExecutor(), 1, blocking, progress=lambda *p: reports.append(p)
    )
    parallel = find_candidates(shared, 0.3, LocalPoolExecutor(2), 2, blocking)

    share = (keys_r[:, None, :] == keys_c[None, :, :]) & (keys_r[:, None, :] != 0)
    rows_a, rows_b = np.nonzero(share.any(axis=2))
    sims = pair_dice(
        requester, custodian, rows_a, rows_b, popcounts(requester), popcounts(custodian)
    )
    keep = sims >= 0.3
    expected = set(zip(rows_a[keep].tolist(), rows_b[keep].tolist(), strict=True))
    found = set(zip(serial.requester_rows.tolist(), serial.custodian_rows.tolist(), strict=True))
    assert found == expected and len(found) == len(serial.similarities)
    assert serial.comparisons == int(share.sum())  # once per key the pair shares
    # Progress counts comparisons, towards a total known before the first one.
    assert reports[-1] == (serial.comparisons, serial.comparisons)
    assert planned_comparisons(shared, blocking) == serial.comparisons
    for name in ("similarities", "requester_rows", "custodian_rows"):
        assert np.array_equal(getattr(serial, name), getattr(parallel, name))


def test_a_key_that_groups_too_many_records_is_refused_before_matching() -> None:
    """A key on a field with few values (here one) puts nearly everyone in one block."""
    rng = np.random.default_rng(2)
    requester = rng.integers(0, 256, (300, 64), dtype=np.uint8)
    custodian = rng.integers(0, 256, (200, 64), dtype=np.uint8)
    everyone = np.ones((300, 1), dtype=np.uint64), np.ones((200, 1), dtype=np.uint64)
    shared = SharedEncodings.of(requester, custodian, *everyone)
    blocking = KeyBlocking.from_document([[{"field": "sex"}]])
    limits = MatchingLimits(max_comparisons=50_000)
    with pytest.raises(MatchingAborted, match="would make 60,000 comparisons"):
        find_candidates(shared, 0.8, SerialExecutor(), 1, blocking, limits)


def test_upload_without_the_agreed_keys_is_refused_and_changes_nothing(
    requester: LinkageClient,
    make_agreement: Callable[..., bytes],
    server: RunningServer,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    files = generate_datasets(tmp_path / "data", 40, 0.5, seed=2)
    blocking = {"method": "keys", "keys": THREE_KEYS}
    project = requester.create_project(make_agreement(blocking=blocking)).project_id
    plain = encode_csv(files.requester, schema, SECRET, tmp_path / "plain.bin", tmp_path / "p.json")
    other_keys = KeyBlocking.from_document(THREE_KEYS[:2] + [NAME_AND_BIRTH[0]])
    wrong = encode_csv(
        files.requester,
        schema,
        SECRET,
        tmp_path / "wrong.bin",
        tmp_path / "w.json",
        blocking=other_keys,
    )
    assert wrong.header.bit_length == 1024 + 3 * 64
    before = snapshot(server)
    for path, code in (
        (plain.encodings_path, grpc.StatusCode.INVALID_ARGUMENT),
        (wrong.encodings_path, grpc.StatusCode.FAILED_PRECONDITION),
    ):
        with pytest.raises(ServerError) as err:
            requester.upload(project, path)
        assert err.value.code == code
        assert "blocking keys" in err.value.details
    assert_unchanged(before, snapshot(server))


def test_key_blocking_through_the_cli(cli: Cli, tmp_path: Path) -> None:
    """agreement new --blocking, encode --agreement, upload, match, release: the released IDs
    are the true ones, and each uploaded record carries the agreed keys."""
    files = generate_datasets(tmp_path / "data", 600, 0.5, seed=4)
    blocking = json.dumps({"method": "keys", "keys": THREE_KEYS})
    agreement = cli.signed_agreement("keyed", "--hardening", "[]", "--blocking", blocking)
    project, printed = cli.link(agreement, files)
    expected = f"({1024 + 3 * 64} bits: a 1024-bit encoding and 3 blocking keys)"
    assert all(expected in out for out in printed.values())
    released = tmp_path / "released.csv"
    ids = str(tmp_path / "requester.json")
    cli.party("requester", "results", "--project", project, "--id-map", ids, "--out", str(released))
    with open(released, newline="") as f:
        released_ids = {row["id"] for row in csv.DictReader(f)}
    quality = membership_quality(released_ids, {r for r, _ in read_truth(files.truth)})
    assert quality.precision >= 0.97 and quality.recall >= 0.85

    # The uploaded records are the encoding followed by the keys, which agree for true pairs.
    keys = {}
    for role in ("requester", "custodian"):
        header, payload = read_payload(tmp_path / f"{role}.bin")
        records = np.frombuffer(payload, dtype=np.uint8).reshape(header.count, -1)
        rows = {v: i for i, v in enumerate(read_id_map(tmp_path / f"{role}.json").ids)}
        keys[role] = (records[:, 128:].copy().view("<u8"), rows)
    (keys_r, rows_r), (keys_c, rows_c) = keys["requester"], keys["custodian"]
    truth = read_truth(files.truth)
    agree = [bool((keys_r[rows_r[r]] == keys_c[rows_c[c]]).any()) for r, c in truth]
    assert np.mean(agree) >= 0.95
