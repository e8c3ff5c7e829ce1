"""A `blindlink serve` process killed with SIGKILL during an upload, during matching and during
a release, then restarted on the same data directory: nothing is lost, duplicated or corrupted.

Each scenario runs five times, the kill landing at a different point each time.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import Identities
from support.encodings import encodings_file, planted_pairs
from support.server_process import ServerProcess, server_launcher, signed_agreement
from support.waiting import wait_until

from blindlink._generated import linkage_pb2 as pb
from blindlink._generated import linkage_pb2_grpc as pb_grpc
from blindlink.cli.main import main
from blindlink.client import linkage_client
from blindlink.client.linkage_client import LinkageClient
from blindlink.encoding.encodings_file import HEADER_SIZE, read_payload
from blindlink.encoding.schema import LinkageSchema
from blindlink.server.app import start_server

ATTEMPTS = range(5)
MATCH_RECORDS = 15_000  # per party: 2.25e8 comparisons, 1-3 s of matching on two cores

launch_fixture = pytest.fixture(name="launch")(server_launcher)


def verify_data_dir(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["admin", "verify", "--data-dir", str(data_dir)]) == 0, capsys.readouterr().out
    assert "data directory OK" in capsys.readouterr().out


def matches(server: ServerProcess, run_id: str) -> list[tuple[int, int, float, int]]:
    return sorted(
        server.rows(
            "SELECT requester_row, custodian_row, similarity, status FROM matches WHERE run_id=?",
            (run_id,),
        )
    )


@pytest.fixture(scope="module")
def matching_files(tmp_path_factory: pytest.TempPathFactory, schema: LinkageSchema) -> dict:
    work = tmp_path_factory.mktemp("matching")
    requester, custodian, _ = planted_pairs(MATCH_RECORDS, 500, seed=7)
    return {
        "requester": encodings_file(work / "requester.bin", requester, schema.sha256),
        "custodian": encodings_file(work / "custodian.bin", custodian, schema.sha256),
    }


@pytest.fixture(scope="module")
def uninterrupted(
    tmp_path_factory: pytest.TempPathFactory,
    identities: Identities,
    schema: LinkageSchema,
    matching_files: dict[str, Path],
) -> list[tuple[int, int, float, int]]:
    """The matches of the same run on a server nobody interrupts."""
    server = start_server(tmp_path_factory.mktemp("reference"), "127.0.0.1:0", None)
    try:
        address = f"127.0.0.1:{server.port}"
        with (
            LinkageClient(address, "requester", None) as requester,
            LinkageClient(address, "custodian", None) as custodian,
        ):
            agreement = signed_agreement(identities, schema, "reference")
            project = requester.create_project(agreement).project_id
            custodian.upload(project, matching_files["custodian"])
            run_id = requester.upload(project, matching_files["requester"]).run_id
            assert requester.wait(project, run_id).state == pb.RUN_STATE_DONE
        rows = server.store._read(  # noqa: SLF001 - the reference's raw rows
            "SELECT requester_row, custodian_row, similarity, status FROM matches WHERE run_id=?",
            (run_id,),
        )
    finally:
        server.stop(grace=1)
    assert len(rows) == 500
    return sorted(rows)


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_kill_during_upload_keeps_what_arrived_and_the_retry_continues(
    attempt: int,
    tmp_path: Path,
    launch: Callable[..., ServerProcess],
    identities: Identities,
    schema: LinkageSchema,
    capsys: pytest.CaptureFixture[str],
) -> None:
    requester_rows, custodian_rows, pairs = planted_pairs(2000, 100, seed=attempt)
    batch = encodings_file(tmp_path / "requester.bin", requester_rows, schema.sha256)
    server = launch().start()
    with server.client("requester") as requester, server.client("custodian") as custodian:
        project = requester.create_project(
            signed_agreement(identities, schema, f"upload {attempt}")
        ).project_id
        custodian.upload(
            project, encodings_file(tmp_path / "custodian.bin", custodian_rows, schema.sha256)
        )
    # Eight chunks, the kill after a different number of them each attempt (the last attempt:
    # every byte sent, the stream not yet closed).
    chunks = np.array_split(requester_rows, 8)
    sent = threading.Event()
    failures: list[grpc.StatusCode] = []

    def messages() -> Iterator[pb.UploadRequest]:
        header, _ = read_payload(batch)
        yield pb.UploadRequest(
            header=pb.UploadHeader(
                project_id=project,
                count=header.count,
                bit_length=header.bit_length,
                schema_sha256=header.schema_sha256,
                content_sha256=header.content_sha256,
            )
        )
        for number, chunk in enumerate(chunks, 1):
            yield pb.UploadRequest(encodings=chunk.tobytes())
            if number == 2 * attempt or number == len(chunks):
                sent.set()
            time.sleep(0.05)
        time.sleep(30)  # the server is killed long before

    def upload() -> None:
        with server.channel("requester") as channel:
            try:
                pb_grpc.LinkageStub(channel).Upload(messages())
            except grpc.RpcError as exc:
                failures.append(exc.code())

    uploader = threading.Thread(target=upload)
    uploader.start()
    assert sent.wait(10)
    time.sleep(0.1)
    server.kill()
    uploader.join(10)
    assert failures == [grpc.StatusCode.UNAVAILABLE]
    # The kill landed mid-upload: the bytes that arrived are kept, no row.
    (kept,) = (server.data_dir / "staged").iterdir()
    assert server.rows("SELECT count(*) FROM uploads WHERE party='requester'") == [(0,)]

    server.start()
    assert list((server.data_dir / "incoming").iterdir()) == []
    assert len(list((server.data_dir / "encodings").iterdir())) == 1  # the custodian's
    with server.client("requester") as requester:
        offset = requester.upload_offset(project, read_payload(batch)[0].content_sha256)
        assert 0 < offset == kept.stat().st_size - HEADER_SIZE
        run_id = requester.upload(project, batch).run_id
        assert requester.wait(project, run_id).state == pb.RUN_STATE_DONE
        assert list(requester.release(project, run_id).own_rows) == [r for r, _ in pairs]
    assert server.rows("SELECT party, count(*) FROM uploads GROUP BY party ORDER BY party") == [
        ("custodian", 1),
        ("requester", 1),
    ]
    assert server.rows("SELECT count(*) FROM runs") == [(1,)]
    assert list((server.data_dir / "staged").iterdir()) == []
    assert server.terminate() == 0
    verify_data_dir(server.data_dir, capsys)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_upload_broken_by_a_restart_continues_by_itself(
    tmp_path: Path,
    launch: Callable[..., ServerProcess],
    identities: Identities,
    schema: LinkageSchema,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client, its stream cut by a server restart halfway, continues from the bytes the
    server kept, without being called again."""
    requester_rows, custodian_rows, pairs = planted_pairs(2000, 100, seed=11)
    batch = encodings_file(tmp_path / "requester.bin", requester_rows, schema.sha256)
    server = launch(listen=f"127.0.0.1:{_free_port()}").start()
    with server.client("requester") as requester, server.client("custodian") as custodian:
        project = requester.create_project(
            signed_agreement(identities, schema, "continued upload")
        ).project_id
        custodian.upload(
            project, encodings_file(tmp_path / "custodian.bin", custodian_rows, schema.sha256)
        )
    monkeypatch.setattr(linkage_client, "CHUNK_BYTES", 16 * 1024)
    halfway, restarted = threading.Event(), threading.Event()
    sent: list[int] = []

    def progress(count: int) -> None:
        sent.append(count)
        if len(sent) == 4:
            halfway.set()
            restarted.wait(30)

    receipts: list[pb.UploadReceipt] = []

    def upload() -> None:
        with server.client("requester") as requester:
            receipts.append(requester.upload(project, batch, progress=progress))

    uploader = threading.Thread(target=upload)
    uploader.start()
    assert halfway.wait(10)
    staged = server.data_dir / "staged"
    assert wait_until(
        lambda: any(p.stat().st_size > HEADER_SIZE for p in staged.iterdir()), every=0.02
    ), "no bytes of the upload reached the server"
    server.kill()
    server.start()
    with server.client("requester") as requester:
        content = read_payload(batch)[0].content_sha256
        assert requester.upload_offset(project, content) > 0  # kept, to be continued
    restarted.set()
    uploader.join(60)
    (receipt,) = receipts
    assert sum(sent) == requester_rows.nbytes
    with server.client("requester") as requester:
        assert requester.wait(project, receipt.run_id).state == pb.RUN_STATE_DONE
        assert list(requester.release(project, receipt.run_id).own_rows) == [r for r, _ in pairs]
    assert server.rows("SELECT count(*) FROM uploads WHERE party='requester'") == [(1,)]
    assert list((server.data_dir / "staged").iterdir()) == []
    assert server.terminate() == 0


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_kill_during_matching_resumes_to_the_uninterrupted_result(
    attempt: int,
    tmp_path: Path,
    launch: Callable[..., ServerProcess],
    identities: Identities,
    schema: LinkageSchema,
    matching_files: dict[str, Path],
    uninterrupted: list[tuple[int, int, float, int]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = launch().start()
    with server.client("requester") as requester, server.client("custodian") as custodian:
        project = requester.create_project(
            signed_agreement(identities, schema, f"matching {attempt}")
        ).project_id
        custodian.upload(project, matching_files["custodian"])
        run_id = requester.upload(project, matching_files["requester"]).run_id
        for progress in requester.watch(project, run_id):
            if progress.state == pb.RUN_STATE_RUNNING:
                break
    time.sleep(0.1 * attempt)  # from loading the encodings to well into the comparisons
    server.kill()
    assert server.rows("SELECT state FROM runs") == [("running",)]
    assert matches(server, run_id) == []

    server.start()
    with server.client("requester") as requester, server.client("custodian") as custodian:
        assert requester.wait(project, run_id).state == pb.RUN_STATE_DONE
        released = requester.release(project, run_id)
        assert custodian.release(project, run_id).match_count == len(uninterrupted)
    assert matches(server, run_id) == uninterrupted
    assert list(released.own_rows) == sorted(r for r, _, _, held in uninterrupted if not held)
    kinds = [kind for (kind,) in server.rows("SELECT kind FROM audit_log ORDER BY seq")]
    assert kinds.count("run_started") == 2  # started, killed, resumed
    assert kinds.count("run_finished") == 1
    assert "run_failed" not in kinds
    assert server.terminate() == 0
    verify_data_dir(server.data_dir, capsys)


def _processes_in_group(group: int) -> list[int]:
    """PIDs of the live processes in a process group (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def test_matching_workers_end_soon_after_the_server_is_killed(
    launch: Callable[..., ServerProcess],
    identities: Identities,
    schema: LinkageSchema,
    matching_files: dict[str, Path],
) -> None:
    """SIGKILL of the server alone (not its process group) during matching: its workers,
    which hold both parties' encodings, and the pool's helper processes end within seconds."""
    server = launch().start()
    assert server.process is not None
    group = server.process.pid
    with server.client("requester") as requester, server.client("custodian") as custodian:
        project = requester.create_project(
            signed_agreement(identities, schema, "orphans")
        ).project_id
        custodian.upload(project, matching_files["custodian"])
        run_id = requester.upload(project, matching_files["requester"]).run_id
        for progress in requester.watch(project, run_id):
            if progress.stage == "comparing":
                break
    assert len(_processes_in_group(group)) > 1  # the server and its pool
    server.process.kill()
    server.process.wait()
    assert wait_until(lambda: _processes_in_group(group) == [], every=0.2)


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_kill_during_releases_keeps_them_whole_and_repeatable(
    attempt: int,
    tmp_path: Path,
    launch: Callable[..., ServerProcess],
    identities: Identities,
    schema: LinkageSchema,
    capsys: pytest.CaptureFixture[str],
) -> None:
    requester_rows, custodian_rows, pairs = planted_pairs(3000, 3000, seed=100 + attempt)
    server = launch().start()
    with server.client("requester") as requester, server.client("custodian") as custodian:
        project = requester.create_project(
            signed_agreement(identities, schema, f"release {attempt}", custodian_release="pairs")
        ).project_id
        custodian.upload(project, encodings_file(tmp_path / "c.bin", custodian_rows, schema.sha256))
        run_id = requester.upload(
            project, encodings_file(tmp_path / "r.bin", requester_rows, schema.sha256)
        ).run_id
        assert requester.wait(project, run_id).state == pb.RUN_STATE_DONE
    expected = {
        "requester": [r for r, _ in pairs],
        "custodian": sorted((c, r) for r, c in pairs),
    }

    # Both parties fetch their release over and over; the kill lands amid these calls.
    outcomes: dict[str, list[str]] = {"requester": [], "custodian": []}

    def fetch(role: str) -> None:
        with server.channel(role) as channel:
            stub = pb_grpc.LinkageStub(channel)
            request = pb.GetReleaseRequest(project_id=project, run_id=run_id)
            while True:
                try:
                    release = stub.GetRelease(request)
                except grpc.RpcError as exc:
                    outcomes[role].append(exc.code().name)
                    return
                same = _release_rows(role, release) == expected[role]
                outcomes[role].append("OK" if same else "a different release")

    fetchers = [threading.Thread(target=fetch, args=(role,)) for role in outcomes]
    for thread in fetchers:
        thread.start()
    time.sleep(random.Random(attempt).uniform(0.05, 0.3))
    server.kill()
    for thread in fetchers:
        thread.join(10)
    for role, seen in outcomes.items():
        assert set(seen[:-1]) <= {"OK"} and seen[-1] == "UNAVAILABLE", (role, seen[-3:])

    server.start()
    with server.client("requester") as requester, server.client("custodian") as custodian:
        for role, client in (("requester", requester), ("custodian", custodian)):
            assert _release_rows(role, client.release(project, run_id)) == expected[role]
    # One release row per party, every logged fetch recorded, the matches intact, and the
    # batch's encodings deleted now that both parties have fetched (the agreement's default).
    assert server.rows("SELECT party FROM releases ORDER BY party") == [
        ("custodian",),
        ("requester",),
    ]
    logged = server.rows("SELECT DISTINCT party FROM audit_log WHERE kind='release_fetched'")
    assert sorted(logged) == [("custodian",), ("requester",)]
    assert server.rows("SELECT count(*) FROM matches WHERE run_id=?", (run_id,)) == [(3000,)]
    batch_file = "SELECT u.file FROM uploads u JOIN runs r ON u.upload_id = r.batch_id "
    assert server.rows(batch_file + "WHERE r.run_id=?", (run_id,)) == [(None,)]
    assert server.terminate() == 0
    verify_data_dir(server.data_dir, capsys)


def _release_rows(role: str, release: pb.Release) -> list:
    if role == "requester":
        return list(release.own_rows)
    return sorted(zip(release.own_rows, release.other_rows, strict=True))
