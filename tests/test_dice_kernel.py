"""The native Dice kernel gives exactly anonlink's results on every code path it has, is chosen
at run time (or forced), and blindlink falls back to anonlink and numpy without it."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.encoding_strategies import EncodingPair, encoding_pairs, thresholds

from blindlink.errors import BlindlinkError
from blindlink.matching import blocking, kernel
from blindlink.matching.engine import SharedEncodings, find_candidates
from blindlink.matching.executors import SerialExecutor
from blindlink.matching.linkage import to_bitarrays

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
    from anonlink.similarities import dice_coefficient_accelerated

NATIVE = [p for p in ("avx512", "avx2", "scalar") if p in kernel.paths()]
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    # The fixture only forces the code path, the same for every example.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(params=NATIVE or [pytest.param("scalar", marks=pytest.mark.skip("not built"))])
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each native code path this CPU runs, forced for the test."""
    before = kernel.active()
    kernel.select(request.param)
    yield request.param
    kernel.select(before)


def anonlink_reference(
    data: EncodingPair, rows: np.ndarray, span: tuple[int, int], threshold: float, k: int | None
) -> list[tuple[float, int, int]]:
    """anonlink's dice_coefficient_accelerated on the chosen rows, in its own order."""
    bits = data.requester.shape[1] * 8
    requester = to_bitarrays(data.requester[rows].tobytes(), bits)
    custodian = to_bitarrays(data.custodian[span[0] : span[1]].tobytes(), bits)
    sims, (r0, r1) = dice_coefficient_accelerated([requester, custodian], threshold, k)
    return list(zip(sims, r0, r1, strict=True))


def in_anonlink_order(pairs: kernel.Pairs) -> list[tuple[float, int, int]]:
    sims, r0, r1 = pairs
    order = np.lexsort((r1, r0, -sims))
    return list(zip(sims[order].tolist(), r0[order].tolist(), r1[order].tolist(), strict=True))


@SETTINGS
@given(
    data=encoding_pairs(),
    threshold=thresholds,
    k=st.one_of(st.none(), st.integers(1, 5)),
    choice=st.data(),
)
def test_all_pairs_equal_anonlink_bit_for_bit(
    path: str, data: EncodingPair, threshold: float, k: int | None, choice: st.DataObject
) -> None:
    n_a, n_b = len(data.requester), len(data.custodian)
    start = choice.draw(st.integers(0, n_b - 1))
    span = (start, choice.draw(st.integers(start + 1, n_b)))
    rows = np.asarray(
        choice.draw(st.lists(st.integers(0, n_a - 1), min_size=1, max_size=n_a)), dtype=np.int64
    )
    selection: slice | np.ndarray = rows if choice.draw(st.booleans()) else slice(0, n_a)
    found = kernel.AllPairs(data.requester, data.custodian).pairs(selection, span, threshold, k)
    expected_rows = rows if isinstance(selection, np.ndarray) else np.arange(n_a)
    expected = anonlink_reference(data, expected_rows, span, threshold, k)
    # Bit-identical: compared as Python floats, whose equality is exact (NaN never occurs).
    assert in_anonlink_order(found) == expected


@SETTINGS
@given(data=encoding_pairs(), seed=st.integers(0, 2**32 - 1))
def test_pair_list_dice_equals_anonlink_bit_for_bit(
    path: str, data: EncodingPair, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    pairs = 50
    rows_a = rng.integers(0, len(data.requester), pairs)
    rows_b = rng.integers(0, len(data.custodian), pairs)
    pop_a, pop_b = kernel.popcounts(data.requester), kernel.popcounts(data.custodian)
    assert pop_a.tolist() == [int(np.unpackbits(r).sum()) for r in data.requester]
    sims = kernel.pair_dice(data.requester, data.custodian, rows_a, rows_b, pop_a, pop_b)
    # anonlink at threshold 0 lists every pair of a non-empty requester record.
    table = {
        (int(a), int(b)): s
        for s, a, b in anonlink_reference(
            data, np.arange(len(data.requester)), (0, len(data.custodian)), 0.0, None
        )
    }
    for a, b, s in zip(rows_a.tolist(), rows_b.tolist(), sims.tolist(), strict=True):
        assert s == table.get((a, b), 0.0)  # empty requester records: 0, as the engine uses


def test_pair_list_refuses_rows_outside_the_encodings(path: str) -> None:
    enc = np.zeros((3, 16), dtype=np.uint8)
    pop = kernel.popcounts(enc)
    with pytest.raises(IndexError, match="pair 1 names a row outside the encodings"):
        kernel.pair_dice(enc, enc, np.array([0, 3]), np.array([0, 0]), pop, pop)


def test_engine_gives_the_same_candidates_on_every_path() -> None:
    rng = np.random.default_rng(5)
    base = rng.random((300, 1024)) < 0.25
    noisy = base ^ (rng.random((300, 1024)) < 0.05)
    shared = SharedEncodings.of(np.packbits(base, axis=1), np.packbits(noisy, axis=1))
    before = kernel.active()
    results = {}
    try:
        for path in kernel.paths():
            kernel.select(path)
            found = find_candidates(shared, 0.7, SerialExecutor(), 1, best=2)
            results[path] = (found.similarities, found.requester_rows, found.custodian_rows)
    finally:
        kernel.select(before)
    reference = results.pop(kernel.REFERENCE)
    assert len(reference[0]) > 300
    for found in results.values():
        assert all(np.array_equal(x, y) for x, y in zip(found, reference, strict=True))


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


CHOOSE_AND_MATCH = """
import logging, numpy as np
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
from blindlink.errors import BlindlinkError
from blindlink.matching import blocking, kernel
from blindlink.matching.engine import SharedEncodings, find_candidates
from blindlink.matching.executors import SerialExecutor
enc = np.packbits(np.random.default_rng(1).random((50, 128)) < 0.3, axis=1)
shared = SharedEncodings.of(enc, enc)
for _ in range(2):
    found = find_candidates(shared, 0.9, SerialExecutor(), 1)
print(kernel.active(), len(found.similarities))
"""


@pytest.mark.skipif(not NATIVE, reason="the native kernel is not built")
def test_the_environment_forces_a_path_and_the_choice_is_logged_once() -> None:
    done = run_python(CHOOSE_AND_MATCH, BLINDLINK_DICE_KERNEL="scalar")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["scalar", "50"]
    assert done.stderr.count("Dice kernel: scalar") == 1, done.stderr


def test_an_unknown_or_unavailable_path_is_refused_clearly() -> None:
    with pytest.raises(BlindlinkError, match="'avx9000' .* cannot run here; choose one of .*ref"):
        kernel.select("avx9000")


def test_without_the_native_kernel_matching_falls_back_with_one_warning() -> None:
    """An install without a C compiler has no _dice module: anonlink and numpy do the work."""
    blocked = "import sys; sys.modules['blindlink.matching._dice'] = None\n" + CHOOSE_AND_MATCH
    done = run_python(blocked)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["reference", "50"]
    warning = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warning) == 1 and "native Dice kernel not available" in warning[0], done.stderr


def test_anonlink_popcount_bound_is_kept_where_it_drops_pairs_at_the_threshold(path: str) -> None:
    """anonlink skips a pair when its popcounts differ by more than (uint32)(2a(1/t - 1)) for the
    requester record's popcount a, computed in doubles: at t = 0.75 that is 1.9999999999999996,
    so 3 bits against 5 (Dice exactly 0.75) is dropped while 5 against 3 is kept. At t = 1e-20
    the bound overflows to 0 and only equal popcounts are compared."""
    three, five = np.zeros((1, 16), np.uint8), np.zeros((1, 16), np.uint8)
    three[0, 0], five[0, 0] = 0b11100000, 0b11111000
    for requester, custodian, threshold in [
        (three, five, 0.75),
        (five, three, 0.75),
        (three, np.r_[five, three], 1e-20),
    ]:
        data = EncodingPair(requester, custodian)
        found = kernel.AllPairs(requester, custodian).pairs(
            slice(0, 1), (0, len(custodian)), threshold
        )
        assert in_anonlink_order(found) == anonlink_reference(
            data, np.arange(1), (0, len(custodian)), threshold, None
        )
    assert kernel.AllPairs(three, five).pairs(slice(0, 1), (0, 1), 0.75)[0].size == 0
    assert kernel.AllPairs(five, three).pairs(slice(0, 1), (0, 1), 0.75)[0].tolist() == [0.75]


@contextmanager
def forced(path: str) -> Iterator[None]:
    """The kernel path `path` for the block, then the one before."""
    before = kernel.active()
    kernel.select(path)
    try:
        yield
    finally:
        kernel.select(before)


@SETTINGS
@given(
    data=encoding_pairs(),
    threshold=thresholds,
    best=st.integers(0, 3),
    groupings=st.integers(1, 3),
    wide=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_block_comparisons_equal_the_numpy_reference(
    path: str,
    data: EncodingPair,
    threshold: float,
    best: int,
    groupings: int,
    wide: bool,
    seed: int,
) -> None:
    """Records grouped by key in several groupings (as by LSH bands or blocking keys, with
    small or 64-bit keys): the same groups, and the same candidates and values, each pair once
    however many groupings it is in, as listing each group's pairs and computing their Dice
    with numpy."""
    rng = np.random.default_rng(seed)
    values = rng.integers(1, 2**64 - 1 if wide else 6, 5, dtype=np.uint64, endpoint=True)
    pops = kernel.popcounts(data.requester), kernel.popcounts(data.custodian)
    found = kernel.BestPairs(data.requester, data.custodian, *pops, threshold, best)
    with forced(kernel.REFERENCE):
        expected = kernel.BestPairs(data.requester, data.custodian, *pops, threshold, best)
    for _ in range(groupings):
        members_a = np.flatnonzero(rng.random(len(data.requester)) < 0.9)
        members_b = np.flatnonzero(rng.random(len(data.custodian)) < 0.9)
        keys_a = values[rng.integers(0, 5, len(members_a))]
        keys_b = values[rng.integers(0, 5, len(members_b))]
        groups = kernel.KeyGroups.of(keys_a, members_a, keys_b, members_b)
        found.add(groups)
        with forced(kernel.REFERENCE):
            reference = kernel.KeyGroups.of(keys_a, members_a, keys_b, members_b)
            expected.add(reference)
        for name in ("rows_a", "rows_b", "start_a", "count_a", "start_b", "count_b"):
            assert getattr(groups, name).tolist() == getattr(reference, name).tolist(), name
        assert groups.comparisons == (keys_a[:, None] == keys_b[None, :]).sum()
    assert as_lists(found.pairs()) == as_lists(expected.pairs())


def as_lists(pairs: kernel.Pairs) -> list[list[float] | list[int]]:
    return [column.tolist() for column in pairs]


@SETTINGS
@given(
    threshold=thresholds,
    best=st.integers(0, 3),
    parts=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_merging_kept_pairs_equals_the_numpy_reference(
    path: str, threshold: float, best: int, parts: int, seed: int
) -> None:
    """Candidate lists, each in `kept`'s order and sharing pairs with the others, merge into
    the candidates of their union."""
    rng = np.random.default_rng(seed)
    sims = rng.choice([0.0, 0.25, 0.5, 0.8, 1.0], (6, 6))  # ties included
    lists = []
    for _ in range(parts):
        r0, r1 = rng.integers(0, 6, 20), rng.integers(0, 6, 20)
        lists.append(kernel.kept((sims[r0, r1], r0, r1), threshold, best))
    with forced(kernel.REFERENCE):
        expected = kernel.merge_kept(lists, threshold, best)
    assert as_lists(kernel.merge_kept(lists, threshold, best)) == as_lists(expected)


def test_merging_refuses_pairs_out_of_order(path: str) -> None:
    ordered = kernel.kept((np.array([0.5, 0.9]), np.array([0, 0]), np.array([1, 2])), 0.0, 0)
    backwards = tuple(column[::-1].copy() for column in ordered)
    with pytest.raises(ValueError, match="not in order of requester row"):
        kernel.merge_kept([ordered, backwards], 0.0, 0)  # type: ignore[list-item]


@SETTINGS
@given(data=encoding_pairs(), bits=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_band_keys_equal_the_numpy_reference(
    path: str, data: EncodingPair, bits: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    positions = rng.integers(0, data.requester.shape[1] * 8, bits)
    columns = np.ascontiguousarray(data.requester.T)
    expected = blocking.band_keys(columns, positions)
    assert kernel.band_keys(columns, positions).tolist() == expected.tolist()
