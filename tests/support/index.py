"""Helpers for tests of the standing custodian index: decisions compared field by field, a
batch's expected decisions against the whole custodian, and a server whose batches are linked
and read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from conftest import ROLES, Identities

from blindlink.benchmarking.data import EncodedPair
from blindlink.client.linkage_client import LinkageClient
from blindlink.encoding.blocking_keys import DEFAULT_SCHEMA_KEYS
from blindlink.encoding.schema import LinkageSchema
from blindlink.matching.blocking import KeyBlocking
from blindlink.matching.decision import Decisions, PairStatus, link
from blindlink.matching.engine import SharedEncodings
from blindlink.matching.executors import SerialExecutor
from blindlink.matching.rules import DecisionRule
from blindlink.server.app import RunningServer, ServerTls, start_server
from blindlink.server.runs import MatchingSettings
from support.server_process import signed_agreement

BLOCKING = KeyBlocking.from_document(DEFAULT_SCHEMA_KEYS)


def keyed_agreement(identities: Identities, schema: LinkageSchema, reference: str) -> bytes:
    """A signed agreement that blocks on the default schema's keys, decides by best estimated
    F*, releases pairs to the custodian and keeps the encodings after a release."""
    return signed_agreement(
        identities,
        schema,
        reference,
        target="best_f_star",
        blocking={"method": "keys", "keys": DEFAULT_SCHEMA_KEYS},
        custodian_release="pairs",
        delete_encodings_after_release=False,
    )


def assert_same(found: Decisions, expected: Decisions) -> None:
    assert found.summary() == expected.summary()
    for name in ("requester_rows", "custodian_rows", "similarities", "status"):
        assert np.array_equal(getattr(found, name), getattr(expected, name)), name
    assert np.array_equal(found.probabilities, expected.probabilities, equal_nan=True)


def serve(
    data_dir: Path, identities: Identities, matching: MatchingSettings | None = None
) -> RunningServer:
    pki = identities.pki
    return start_server(
        data_dir,
        "127.0.0.1:0",
        ServerTls(pki.server_cert, pki.server_key, pki.ca_cert),
        matching=matching or MatchingSettings(SerialExecutor(), 1, MatchingSettings.local().limits),
    )


def clients(server: RunningServer, identities: Identities) -> dict[str, LinkageClient]:
    address = f"127.0.0.1:{server.port}"
    return {role: LinkageClient(address, role, identities.tls(role)) for role in ROLES}


def run_batch(
    server: RunningServer, parties: dict[str, LinkageClient], project: str, batch: Path
) -> tuple[list[tuple[int, int]], dict[str, Any]]:
    """Upload a requester batch; the released (requester row, custodian row) pairs and how the
    run decided, as its audit entry records it."""
    run_id = parties["requester"].upload(project, batch).run_id
    final = parties["requester"].wait(project, run_id)
    assert "failed" not in final.message, final.message
    release = parties["custodian"].release(project, run_id)
    run = server.store.run(project, run_id)
    assert run is not None and run.decision is not None
    return sorted(zip(release.other_rows, release.own_rows, strict=True)), run.decision.to_dict()


def expected_batch(
    pair: EncodedPair, rows: slice, rule: DecisionRule
) -> tuple[list[tuple[int, int]], dict[str, Any]]:
    """What the batch's run decides against the whole custodian, without an index."""
    whole = SharedEncodings.of(
        pair.requester[rows], pair.custodian, pair.requester_keys[rows], pair.custodian_keys
    )
    decisions = link(whole, rule, SerialExecutor(), 1, BLOCKING)
    matched = decisions.status == PairStatus.MATCH
    pairs = zip(
        decisions.requester_rows[matched].tolist(),
        decisions.custodian_rows[matched].tolist(),
        strict=True,
    )
    return sorted(pairs), decisions.summary().to_dict()
