"""The operator's view of blocking key groups, and operator limits applied per requester batch:
the largest groups are reported in the operator's log and metrics and never to the parties, and
a batch over a limit is refused while smaller batches of the same project run."""

from __future__ import annotations

import logging
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import Identities
from prometheus_client.parser import text_string_to_metric_families
from support.encodings import encodings_file
from support.server_process import signed_agreement

from blindlink._generated import linkage_pb2 as pb
from blindlink.agreement.signing import parse_signed
from blindlink.cli.main import main
from blindlink.client.linkage_client import LinkageClient
from blindlink.encoding.schema import LinkageSchema
from blindlink.matching.blocking import (
    KeyBlocking,
    KeyGroup,
    custodian_key_counts,
    describe_key_loads,
    key_loads,
)
from blindlink.matching.engine import MatchingLimits
from blindlink.matching.executors import SerialExecutor
from blindlink.server.app import RunningServer, ServerTls, start_server
from blindlink.server.runs import MatchingSettings

KEYS = [
    [{"field": "given_name"}, {"field": "surname"}],
    [{"field": "surname", "prefix": 3}, {"field": "date_of_birth"}],
]
BLOCKING = {"method": "keys", "keys": KEYS}
# Two key values as the parties' HMACs make them: 64 bits that look random.
KEY_VALUES = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F)


def test_key_loads_are_each_keys_comparisons_and_largest_groups() -> None:
    requester = np.array([[5, 1], [5, 1], [5, 2], [7, 0], [9, 3]], dtype=np.uint64)
    custodian = np.array([[5, 1], [7, 2], [7, 2], [7, 0], [8, 0]], dtype=np.uint64)
    counts = custodian_key_counts(requester, custodian)
    assert counts.tolist() == [[1, 1], [1, 1], [1, 2], [3, 0], [0, 0]]
    loads = key_loads(KeyBlocking.from_document(KEYS), requester, counts, top=2)

    assert [load.key for load in loads] == [
        "given_name + surname",
        "surname[:3] + date_of_birth",
    ]
    # Key 0: value 5 is 3 x 1, value 7 is 1 x 3; value 9 and 8 meet nobody.
    assert loads[0].comparisons == 6
    assert loads[0].largest == (KeyGroup(3, 1), KeyGroup(1, 3))
    # Key 1: value 1 is 2 x 1, value 2 is 1 x 2; 0 means no key and groups nobody.
    assert loads[1].comparisons == 4
    assert loads[1].largest == (KeyGroup(2, 1), KeyGroup(1, 2))
    assert describe_key_loads(loads) == (
        "given_name + surname: 6 comparisons, largest groups 3x1 (30.0%), 1x3 (30.0%); "
        "surname[:3] + date_of_birth: 4 comparisons, largest groups 2x1 (20.0%), 1x2 (20.0%)"
    )


def keyed_file(path: Path, keys: np.ndarray, seed: int, agreement: bytes) -> Path:
    """Random encodings (no two alike: nothing matches) followed by `keys`, as uploaded."""
    terms = parse_signed(agreement).agreement
    rng = np.random.default_rng(seed)
    encodings = rng.integers(0, 256, (len(keys), terms.bit_length // 8), dtype=np.uint8)
    rows = np.hstack([encodings, keys.astype("<u8").view(np.uint8)])
    return encodings_file(path, rows, terms.encodings_id)


def with_keys(records: int, groups: list[tuple[int, int]]) -> np.ndarray:
    """Keys for `records` records: for the first key, `groups` of (value, records with that
    value) first; every other key missing (0)."""
    keys = np.zeros((records, len(KEYS)), dtype=np.uint64)
    row = 0
    for value, count in groups:
        keys[row : row + count, 0] = value
        row += count
    return keys


def serve(tmp_path: Path, identities: Identities, limits: MatchingLimits) -> RunningServer:
    pki = identities.pki
    return start_server(
        tmp_path / "data",
        "127.0.0.1:0",
        ServerTls(pki.server_cert, pki.server_key, pki.ca_cert),
        matching=MatchingSettings(SerialExecutor(), 1, limits),
        metrics_listen="127.0.0.1:0",
    )


def test_the_largest_key_groups_reach_the_operator_and_never_the_parties(
    tmp_path: Path,
    identities: Identities,
    schema: LinkageSchema,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # One key value groups 29 requester records with 41 custodian records (1,189 comparisons);
    # another 17 with 19 (323). The other records have no keys.
    server = serve(tmp_path, identities, MatchingLimits())
    caplog.set_level(logging.INFO, "blindlink.server.runs")
    seen: list[str] = []  # everything either party is told
    try:
        address = f"127.0.0.1:{server.port}"
        with (
            LinkageClient(address, "requester", identities.tls("requester")) as requester,
            LinkageClient(address, "custodian", identities.tls("custodian")) as custodian,
        ):
            agreement = signed_agreement(
                identities,
                schema,
                "groups",
                blocking=BLOCKING,
                delete_encodings_after_release=False,
            )
            project = requester.create_project(agreement).project_id
            custodian_keys = with_keys(67, [(KEY_VALUES[0], 41), (KEY_VALUES[1], 19)])
            requester_keys = with_keys(53, [(KEY_VALUES[0], 29), (KEY_VALUES[1], 17)])
            custodian.upload(project, keyed_file(tmp_path / "c.bin", custodian_keys, 1, agreement))
            receipt = requester.upload(
                project, keyed_file(tmp_path / "r.bin", requester_keys, 2, agreement)
            )
            seen += [str(receipt), *map(str, requester.watch(project, receipt.run_id))]
            assert requester.wait(project, receipt.run_id).state == pb.RUN_STATE_DONE
            for party in (requester, custodian):
                seen += [str(party.status(project)), str(party.release(project, receipt.run_id))]
        assert server.metrics_port is not None
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        scraped = urllib.request.urlopen(url).read().decode()
    finally:
        server.stop(grace=1)
    assert main(["admin", "key-groups", "--data-dir", str(tmp_path / "data"), project]) == 0
    admin = capsys.readouterr().out

    figures = (
        "given_name + surname: 1,512 comparisons, largest groups 29x41 (78.6%), 17x19 (21.4%); "
        "surname[:3] + date_of_birth: 0 comparisons, largest groups none"
    )
    logged = [r.getMessage() for r in caplog.records if "blocking key groups" in r.getMessage()]
    assert logged == [f"run {receipt.run_id[:12]} blocking key groups: {figures}"]
    assert admin == f"{receipt.run_id}  done  {figures}\n"
    largest = {
        s.labels["key"]: s.value
        for family in text_string_to_metric_families(scraped)
        if family.name == "blindlink_key_group_largest_comparisons"
        for s in family.samples
        if s.name.endswith("_sum")
    }
    assert largest == {"given_name + surname": 1189.0, "surname[:3] + date_of_birth": 0.0}
    # The operator sees sizes, never a key value (it would identify the group across runs).
    operator = "\n".join([*logged, admin, scraped])
    for value in KEY_VALUES:
        assert str(value) not in operator and f"{value:x}" not in operator
    # The parties learn none of it: not the other party's records in a group (41 for the
    # requester, 29 for the custodian), nor comparisons, nor shares. A figure is a number on
    # its own, not part of an ID, a time, a signature or an escaped byte such as \323.
    figures_told = re.compile(
        r"(?<![\\\w.+/=:-])(29|41|17|19|1,?189|1,?512|323|78\.6|21\.4)(?![\w.+/=:-])"
    )
    told = "\n".join(seen)
    assert "x41" not in told
    assert figures_told.findall(told) == []


def test_operator_limits_apply_per_requester_batch(
    tmp_path: Path,
    identities: Identities,
    schema: LinkageSchema,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each batch is a run of its own: one over the limit is refused with the limit named (the
    operator's log has its key groups), and the project's smaller batches before and after it
    run."""
    # The custodian's 100 records fall in 10 key groups of 10; a requester record meets one.
    custodian_keys = with_keys(100, [(1 + v, 10) for v in range(10)])
    limits = {
        "max_comparisons": MatchingLimits(max_comparisons=1_000),
        # A 20-record batch needs under 70 kB, 400 records over 170 kB, kernel as it is.
        "max_memory_gb": MatchingLimits(max_memory_bytes=100_000),
    }
    caplog.set_level(logging.INFO, "blindlink.server.runs")
    for name, limit in limits.items():
        server = serve(tmp_path / name, identities, limit)
        try:
            address = f"127.0.0.1:{server.port}"
            with (
                LinkageClient(address, "requester", identities.tls("requester")) as requester,
                LinkageClient(address, "custodian", identities.tls("custodian")) as custodian,
            ):
                agreement = signed_agreement(identities, schema, name, blocking=BLOCKING)
                project = requester.create_project(agreement).project_id
                custodian.upload(
                    project, keyed_file(tmp_path / "c.bin", custodian_keys, 1, agreement)
                )
                runs, outcomes = [], []
                for seed, records in enumerate((20, 400, 20)):  # 200, 4,000, 200 comparisons
                    batch = with_keys(records, [(1 + v, records // 10) for v in range(10)])
                    path = keyed_file(tmp_path / f"r{seed}.bin", batch, seed + 2, agreement)
                    runs.append(requester.upload(project, path).run_id)
                    outcomes.append(requester.wait(project, runs[-1]))
        finally:
            server.stop(grace=1)
        assert [o.state for o in outcomes] == [
            pb.RUN_STATE_DONE,
            pb.RUN_STATE_FAILED,
            pb.RUN_STATE_DONE,
        ], name
        assert len(set(runs)) == 3
        assert f"above the operator's limit {name}" in outcomes[1].message
        refused = f"run {runs[1][:12]} blocking key groups: given_name + surname: 4,000 "
        assert any(r.getMessage().startswith(refused) for r in caplog.records)
