"""The server never receives or stores plaintext identity data or the linkage secret.

Both parties encode and upload through a recording TCP proxy in front of a real server, then
fetch their releases. Every byte the server received, every file in its data directory and its
log are searched for every identity value of both CSV files and for the secret.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import random
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.leaks import chance_bound, found_in, identity_values, leaked

from blindlink._generated import linkage_pb2 as pb
from blindlink.client.linkage_client import LinkageClient
from blindlink.encoding.blocking_keys import BlockingKeyMaker
from blindlink.encoding.encoder import encode_csv
from blindlink.encoding.schema import LinkageSchema
from blindlink.matching.blocking import KeyBlocking
from blindlink.server.app import RunningServer, start_server
from blindlink.synthetic import generate_datasets

SECRET = b"privacy test secret: never leaves the parties"


class RecordingProxy:
    """Forwards TCP connections to `upstream`, keeping every byte sent towards it."""

    def __init__(self, upstream_port: int) -> None:
        self.received = bytearray()
        self._upstream = upstream_port
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        try:
            while data := source.recv(65536):
                if record:
                    with self._lock:
                        self.received.extend(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


BLOCKING_KEYS = [
    [{"field": "given_name"}, {"field": "surname"}],
    [{"field": "surname", "prefix": 3}, {"field": "date_of_birth"}],
]


@pytest.fixture(params=["all pairs", "blocking keys"])
def linked(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    schema: LinkageSchema,
    make_agreement: Callable[..., bytes],
    caplog: pytest.LogCaptureFixture,
) -> Iterator[tuple[RunningServer, RecordingProxy, Path, dict[str, pb.Release]]]:
    """A run from upload to both releases, through a proxy recording what the server receives;
    with all pairs compared, or with keyed blocking keys in every record."""
    caplog.set_level(logging.DEBUG)
    keys = KeyBlocking.from_document(BLOCKING_KEYS) if request.param == "blocking keys" else None
    blocking = {"method": "keys", "keys": BLOCKING_KEYS} if keys else None
    files = generate_datasets(tmp_path / "data", 300, 0.5, seed=11)
    # Plaintext gRPC on loopback, so that the proxy records exactly the bytes the server's
    # application receives; with TLS it would record ciphertext and prove nothing.
    server = start_server(tmp_path / "server", "127.0.0.1:0", None)
    proxy = RecordingProxy(server.port)
    address = f"127.0.0.1:{proxy.port}"
    releases = {}
    try:
        with (
            LinkageClient(address, "requester", None) as requester,
            LinkageClient(address, "custodian", None) as custodian,
        ):
            project = requester.create_project(
                make_agreement(custodian_release="pairs", blocking=blocking)
            )
            run_id = ""
            for client, csv_path in ((custodian, files.custodian), (requester, files.requester)):
                out = tmp_path / client.party
                out.mkdir()
                encode_csv(
                    csv_path, schema, SECRET, out / "enc.bin", out / "ids.json", blocking=keys
                )
                run_id = client.upload(project.project_id, out / "enc.bin").run_id
            assert requester.wait(project.project_id, run_id).state == pb.RUN_STATE_DONE
            releases = {
                c.party: c.release(project.project_id, run_id) for c in (requester, custodian)
            }
            requester.status(project.project_id)
        yield server, proxy, tmp_path / "data", releases
    finally:
        proxy.close()
        server.stop(grace=1)


def test_server_receives_and_stores_no_plaintext_or_secret(
    linked: tuple[RunningServer, RecordingProxy, Path, dict[str, pb.Release]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, proxy, data_dir, releases = linked
    plaintext = identity_values(data_dir / "requester.csv", data_dir / "custodian.csv")
    secrets = {SECRET, SECRET.hex().encode(), SECRET[:16]}
    # The search works: it finds the values where they are, and the run really happened.
    assert len(plaintext) > 1000
    assert found_in((data_dir / "custodian.csv").read_bytes(), plaintext)
    assert len(proxy.received) > 600 * 128
    assert releases["requester"].match_count > 100

    assert leaked(bytes(proxy.received), plaintext | secrets) == set()
    stored = [p for p in server.store.data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "blindlink.db" for p in stored)
    assert any(p.suffix == ".bin" for p in stored)
    for path in stored:
        assert leaked(path.read_bytes(), plaintext | secrets) == set(), path
    assert found_in(caplog.text.encode(), plaintext | secrets) == set()  # text, not random


def test_leak_search_tells_a_record_from_chance() -> None:
    """One short value in random bytes is chance; a long value, or a few short ones, a leak."""
    noise = random.Random(7).randbytes(200_000)
    values = {b"Mark", b"Ruth", b"Owen", b"Smithers", b"19800412", b"Baker Street"}
    assert leaked(noise + b"Mark", values) == set()
    assert leaked(noise + b"Smithers", values) == {b"Smithers"}
    assert leaked(noise + b"Mark Ruth Owen", values) == {b"Mark", b"Ruth", b"Owen"}
    assert leaked(noise, values) == set()
    assert chance_bound(0.0) == 0
    assert chance_bound(0.035) == 3  # ~1,500 short names in ~100 kB: P(more than 3) ~ 6e-8


@pytest.mark.parametrize("linked", ["blocking keys"], indirect=True)
def test_blocking_keys_reach_the_server_only_keyed_with_the_secret(
    linked: tuple[RunningServer, RecordingProxy, Path, dict[str, pb.Release]],
    schema: LinkageSchema,
) -> None:
    """The server receives the requester's keys as made under the shared secret; the same
    combinations hashed without it (as the server could, to test guesses) are nowhere."""
    _, proxy, data_dir, _ = linked
    received = bytes(proxy.received)
    with open(data_dir / "requester.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    blocking = KeyBlocking.from_document(BLOCKING_KEYS)

    def key_bytes(secret: bytes) -> set[bytes]:
        keys = BlockingKeyMaker(blocking, schema, secret).make(rows)
        return {int(k).to_bytes(8, "little") for k in keys.ravel() if k}

    assert len(found_in(received, key_bytes(SECRET))) == len(key_bytes(SECRET)) > 400
    assert found_in(received, key_bytes(b"a guessed secret")) == set()
    plain = set()
    for row in rows:
        for message in (f"{row[1]}\x1f{row[2]}".casefold(), row[1] + row[2]):
            digest = hashlib.sha256(message.encode()).digest()
            plain |= {digest[:8], digest[-8:]}
    assert found_in(received, plain) == set()
