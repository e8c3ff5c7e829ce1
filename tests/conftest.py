"""Shared fixtures: a real linkage server on a loopback port with its own data directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blindlink.agreement.model import new_agreement_document
from blindlink.canonical import canonical_json
from blindlink.client.linkage_client import LinkageClient
from blindlink.encoding.schema import LinkageSchema, default_schema_path, load_schema
from blindlink.server.app import RunningServer, start_server

SECRET = b"a shared secret for the blindlink tests"


@pytest.fixture(scope="session")
def schema() -> LinkageSchema:
    return load_schema(default_schema_path())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path / "server-data", "127.0.0.1:0")
    yield running
    running.stop(grace=1)


@pytest.fixture
def address(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
def requester(address: str) -> Iterator[LinkageClient]:
    with LinkageClient(address, "requester") as client:
        yield client


@pytest.fixture
def custodian(address: str) -> Iterator[LinkageClient]:
    with LinkageClient(address, "custodian") as client:
        yield client


@pytest.fixture
def make_agreement(schema: LinkageSchema) -> Callable[..., bytes]:
    """Agreement bytes for the default schema; keyword arguments replace its settings."""
    return lambda reference="test agreement", **overrides: agreement_bytes(
        schema, reference, **overrides
    )


def agreement_bytes(schema: LinkageSchema, reference: str, **overrides: object) -> bytes:
    """A valid agreement for the default schema; keyword arguments replace its settings."""
    settings: dict[str, object] = {
        "requester_release": "own_rows",
        "custodian_release": "count",
        "threshold": 0.8,
        "max_records_per_upload": 10_000,
        "bit_length": schema.bit_length,
    }
    settings.update(overrides)
    document = new_agreement_document(
        reference,
        "Requesting agency",
        "Custodian agency",
        schema.sha256,
        settings["bit_length"],
        settings["threshold"],
        settings["requester_release"],
        settings["custodian_release"],
        settings["max_records_per_upload"],
    )
    return canonical_json(document)
