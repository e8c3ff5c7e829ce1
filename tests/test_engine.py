"""Parallel matching: identical results on every executor, blocking, and operator limits."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
from anonlink.candidate_generation import find_candidate_pairs
from anonlink.similarities import dice_coefficient_accelerated

from blindlink._generated import linkage_pb2 as pb
from blindlink.client.linkage_client import LinkageClient
from blindlink.errors import BlindlinkError
from blindlink.matching import engine, kernel
from blindlink.matching.blocking import LshBlocking, band_keys
from blindlink.matching.engine import (
    MatchingAborted,
    MatchingLimits,
    SharedEncodings,
    find_candidates,
)
from blindlink.matching.executors import (
    DaskExecutor,
    LocalPoolExecutor,
    SerialExecutor,
    stop_requested,
)
from blindlink.matching.linkage import to_bitarrays
from blindlink.server.app import start_server
from blindlink.server.runs import MatchingSettings


def encodings(n: int, seed: int, noise: float = 0.03) -> SharedEncodings:
    """n requester records; the custodian holds noisy copies of them, shuffled."""
    rng = np.random.default_rng(seed)
    base = rng.random((n, 512)) < 0.3
    noisy = base ^ (rng.random((n, 512)) < noise)
    return SharedEncodings.of(
        np.packbits(base, axis=1), np.packbits(noisy[rng.permutation(n)], axis=1)
    )


def single_call(
    requester: list, custodian: list, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One raw anonlink find_candidate_pairs call over all records."""
    sims, _, (r0, r1) = find_candidate_pairs(
        [requester, custodian], dice_coefficient_accelerated, threshold
    )
    return (
        np.frombuffer(sims, dtype=np.float64),
        np.frombuffer(r0, dtype=np.uint32),
        np.frombuffer(r1, dtype=np.uint32),
    )


def as_tuples(c: engine.Candidates) -> list[tuple[float, int, int]]:
    return list(
        zip(
            c.similarities.tolist(),
            c.requester_rows.tolist(),
            c.custodian_rows.tolist(),
            strict=True,
        )
    )


@pytest.fixture
def many_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "CHUNK_COMPARISONS", 40_000)


def test_pool_equals_single_anonlink_call(many_chunks: None) -> None:
    shared = encodings(900, seed=1)
    pooled = find_candidates(shared, 0.6, LocalPoolExecutor(2), 2)
    sims, rows0, rows1 = single_call(
        to_bitarrays(shared.requester.tobytes(), 512),
        to_bitarrays(shared.custodian.tobytes(), 512),
        0.6,
    )
    assert len(engine.plan(shared, 0.6, None)) > 10
    assert as_tuples(pooled) == list(
        zip(sims.tolist(), rows0.tolist(), rows1.tolist(), strict=True)
    )
    assert pooled.comparisons == 900 * 900
    assert as_tuples(find_candidates(shared, 0.6, SerialExecutor(), 1)) == as_tuples(pooled)


def test_dask_local_cluster_equals_single_process(many_chunks: None) -> None:
    distributed = pytest.importorskip("dask.distributed")
    shared = encodings(600, seed=2)
    expected = find_candidates(shared, 0.6, SerialExecutor(), 1)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        on_dask = find_candidates(shared, 0.6, DaskExecutor(cluster.scheduler_address), 2)
    assert as_tuples(on_dask) == as_tuples(expected)
    assert len(expected.similarities) >= 590


def sleep_for(seconds: float, shared: object) -> float:
    """Sleep, in steps, until `seconds` have passed or the pool asks its tasks to stop."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not stop_requested():
        time.sleep(0.05)
    return seconds


def test_a_pool_stopped_early_does_not_wait_for_its_running_tasks() -> None:
    """A consumer that stops before the last result (a limit reached, or a stopping server)
    has the pool ask its running tasks to stop, rather than wait for them."""
    started = time.monotonic()
    results = LocalPoolExecutor(2).run(sleep_for, [0.0, 60.0, 60.0, 60.0], None)
    assert next(r for r in results if r is not None) == 0.0  # None: no result yet
    results.close()
    assert time.monotonic() - started < 20


def test_missing_dask_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    with pytest.raises(BlindlinkError, match="'dask' extra"):
        DaskExecutor("tcp://127.0.0.1:1")


def test_lsh_blocking_finds_close_pairs_with_far_fewer_comparisons() -> None:
    shared = encodings(2000, seed=3)
    blocking = LshBlocking(bands=16, bits_per_band=16, seed=7)
    all_pairs = find_candidates(shared, 0.7, SerialExecutor(), 1)
    blocked = find_candidates(shared, 0.7, SerialExecutor(), 1, blocking)
    assert blocked.reduction_ratio > 0.95
    assert set(as_tuples(blocked)) <= set(as_tuples(all_pairs))
    assert len(blocked.similarities) >= 0.99 * len(all_pairs.similarities)
    pooled = find_candidates(shared, 0.7, LocalPoolExecutor(2), 2, blocking)
    assert as_tuples(pooled) == as_tuples(blocked)


def test_compacting_band_results_as_they_arrive_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pairs found in many bands are kept once, with each record's best few, whether the
    server compacts the band results once at the end or many times as they arrive; and the
    candidate cap counts distinct pairs, not their repeats across bands."""
    shared = encodings(600, seed=5, noise=0.1)
    blocking = LshBlocking(bands=40, bits_per_band=8, seed=2)
    whole = find_candidates(shared, 0.6, SerialExecutor(), 1, blocking, best=4)
    monkeypatch.setattr(engine, "COMPACT_ROWS", 50)
    distinct = len(whole.similarities)
    limits = MatchingLimits(max_candidate_pairs=distinct)
    piecewise = find_candidates(shared, 0.6, SerialExecutor(), 1, blocking, limits, best=4)
    assert as_tuples(piecewise) == as_tuples(whole)
    assert whole.comparisons == piecewise.comparisons > 2 * distinct  # repeats across bands


def test_lsh_candidates_are_the_best_across_every_band(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bands compared a few per task, each task keeping every record's best across its bands,
    the tasks' results merged as they arrive: exactly the candidates of all the pairs that
    share a band (at or above the threshold, and each record's best 4), each pair once, as
    when every band's own candidates were merged; progress still counts bands."""
    shared = encodings(600, seed=5, noise=0.1)
    blocking = LshBlocking(bands=40, bits_per_band=8, seed=2)
    share, comparisons = np.zeros((600, 600), dtype=bool), 0
    columns = [np.ascontiguousarray(side.T) for side in (shared.requester, shared.custodian)]
    for positions in blocking.positions(512):
        keys_a, keys_b = (band_keys(c, positions) for c in columns)
        same = keys_a[:, None] == keys_b[None, :]
        share |= same
        comparisons += int(same.sum())
    bits_a, bits_b = (
        np.unpackbits(shared.requester, axis=1),
        np.unpackbits(shared.custodian, axis=1),
    )
    common = bits_a.astype(np.int64) @ bits_b.T.astype(np.int64)
    total = bits_a.sum(axis=1)[:, None] + bits_b.sum(axis=1)[None, :]
    dice = np.divide(2.0 * common, total, out=np.zeros(total.shape), where=total > 0)
    r0, r1 = np.nonzero(share)
    sims, r0, r1 = kernel.kept((dice[r0, r1], r0, r1), 0.35, 4)
    order = np.lexsort((r1, r0, -sims))
    expected = list(zip(sims[order].tolist(), r0[order].tolist(), r1[order].tolist(), strict=True))
    monkeypatch.setattr(engine, "BANDS_PER_TASK", 4)
    monkeypatch.setattr(engine, "COMPACT_ROWS", 50)
    for executor, workers in ((SerialExecutor(), 1), (LocalPoolExecutor(2), 2)):
        reports: list[tuple[int, int]] = []
        found = find_candidates(
            shared, 0.35, executor, workers, blocking, best=4, progress=_recorder(reports)
        )
        assert as_tuples(found) == expected
        assert found.comparisons == comparisons
        # Progress is in bands, whatever the bands per task (and repeated while the pool
        # waits for results, so that a stopping server need not wait for them).
        assert sorted(set(reports) - {(0, 40)}) == [(done, 40) for done in range(4, 41, 4)]
    assert len(expected) > 4 * 600  # pairs at or above 0.35 beyond the best 4 are included


def _recorder(reports: list[tuple[int, int]]) -> engine.Progress:
    """A progress callback that appends each (done, total) to `reports`."""
    return lambda done, total: reports.append((done, total))


def test_candidate_cap_aborts_with_the_reason() -> None:
    shared = encodings(300, seed=4)
    with pytest.raises(MatchingAborted, match="more than 100 candidate pairs"):
        find_candidates(
            shared, 0.0 + 1e-9, SerialExecutor(), 1, limits=MatchingLimits(max_candidate_pairs=100)
        )


def test_comparisons_cap_refuses_before_starting() -> None:
    shared = encodings(300, seed=6)
    reports: list[tuple[int, int]] = []
    limits = MatchingLimits(max_comparisons=89_999)
    with pytest.raises(MatchingAborted, match="would make 90,000 comparisons.*limit of 89,999"):
        find_candidates(
            shared, 0.8, SerialExecutor(), 1, limits=limits, progress=lambda *p: reports.append(p)
        )
    assert reports == []  # refused before any comparison
    at_limit = MatchingLimits(max_comparisons=90_000)
    assert find_candidates(shared, 0.8, SerialExecutor(), 1, limits=at_limit).comparisons == 90_000


def test_memory_cap_refuses_before_starting() -> None:
    shared = encodings(300, seed=5)
    with pytest.raises(MatchingAborted, match="above the operator's limit"):
        find_candidates(
            shared, 0.8, SerialExecutor(), 1, limits=MatchingLimits(max_memory_bytes=10_000)
        )


def test_capped_run_fails_cleanly_on_the_server(tmp_path: Path, make_agreement, schema) -> None:
    from support.encodings import encodings_file, random_rows

    settings = MatchingSettings(SerialExecutor(), 1, MatchingLimits(max_candidate_pairs=5))
    server = start_server(tmp_path / "server", "127.0.0.1:0", None, matching=settings)
    try:
        address = f"127.0.0.1:{server.port}"
        with (
            LinkageClient(address, "requester", None) as requester,
            LinkageClient(address, "custodian", None) as custodian,
        ):
            project = requester.create_project(
                make_agreement(threshold=0.5, allow_unusual_threshold=True)
            ).project_id
            rows = random_rows(20, 1)
            custodian.upload(project, encodings_file(tmp_path / "c.bin", rows, schema.sha256))
            run_id = requester.upload(
                project, encodings_file(tmp_path / "r.bin", rows, schema.sha256)
            ).run_id
            final = requester.wait(project, run_id)
            assert final.state == pb.RUN_STATE_FAILED
            assert "above the operator's limit max_candidate_pairs" in final.message
            assert not any(ch.isdigit() for ch in final.message)
            with pytest.raises(BlindlinkError, match="nothing to release"):
                requester.release(project, run_id)
    finally:
        server.stop(grace=1)
