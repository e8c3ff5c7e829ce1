"""From candidates to matches: greedy 1:1 solving and the ambiguity rule."""

import numpy as np
import pytest
from anonlink.candidate_generation import find_candidate_pairs
from anonlink.similarities import dice_coefficient_accelerated
from anonlink.solving import greedy_solve
from hypothesis import given, settings
from hypothesis import strategies as st

from blindlink.matching.engine import SharedEncodings, find_candidates
from blindlink.matching.executors import SerialExecutor
from blindlink.matching.linkage import (
    Matches,
    ambiguous,
    anonlink_one_to_one,
    solve_one_to_one,
    to_bitarrays,
)


def _noisy_pair(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.random((n, 256)) < 0.3
    noisy = base ^ (rng.random((n, 256)) < 0.04)
    return np.packbits(base, axis=1), np.packbits(noisy[rng.permutation(n)], axis=1)


def _match(requester: np.ndarray, custodian: np.ndarray, threshold: float) -> Matches:
    c = find_candidates(SharedEncodings.of(requester, custodian), threshold, SerialExecutor(), 1)
    return solve_one_to_one(c.similarities, c.requester_rows, c.custodian_rows)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 15), st.integers(0, 15), st.sampled_from([0.5, 0.6, 0.7, 0.8, 1.0])
        ),
        max_size=120,
        unique_by=lambda c: (c[0], c[1]),
    )
)
def test_solving_equals_anonlink_greedy_solve_on_any_candidates(
    candidates: list[tuple[int, int, float]],
) -> None:
    """Ties, records in many candidates, chains of rivals: the same matches as anonlink."""
    rows0 = np.array([c[0] for c in candidates], dtype=np.int64)
    rows1 = np.array([c[1] for c in candidates], dtype=np.int64)
    sim = np.array([c[2] for c in candidates], dtype=np.float64)
    order = np.lexsort((rows1, rows0, -sim))
    sim, rows0, rows1 = sim[order], rows0[order], rows1[order]
    ours, reference = solve_one_to_one(sim, rows0, rows1), anonlink_one_to_one(sim, rows0, rows1)
    np.testing.assert_array_equal(ours.requester_rows, reference.requester_rows)
    np.testing.assert_array_equal(ours.custodian_rows, reference.custodian_rows)
    np.testing.assert_array_equal(ours.similarities, reference.similarities)


def test_matches_equal_anonlink_greedy_solve() -> None:
    requester, custodian = _noisy_pair(600, seed=3)
    result = _match(requester, custodian, 0.6)
    candidates = find_candidate_pairs(
        [to_bitarrays(requester.tobytes(), 256), to_bitarrays(custodian.tobytes(), 256)],
        dice_coefficient_accelerated,
        0.6,
    )
    expected = sorted((dict(g)[0], dict(g)[1]) for g in greedy_solve(candidates))
    assert (
        list(zip(result.requester_rows.tolist(), result.custodian_rows.tolist(), strict=True))
        == expected
    )


def test_matches_are_one_to_one_with_their_similarity() -> None:
    requester, custodian = _noisy_pair(300, seed=5)
    result = _match(requester, custodian, 0.5)
    assert len(set(result.requester_rows.tolist())) == len(result)
    assert len(set(result.custodian_rows.tolist())) == len(result)
    a_bits, b_bits = to_bitarrays(requester.tobytes(), 256), to_bitarrays(custodian.tobytes(), 256)
    for r, c, s in zip(
        result.requester_rows, result.custodian_rows, result.similarities, strict=True
    ):
        a, b = a_bits[r], b_bits[c]
        assert s == pytest.approx(2 * (a & b).count() / (a.count() + b.count()))
        assert s >= 0.5


def test_unrelated_records_give_no_matches() -> None:
    requester, _ = _noisy_pair(50, seed=7)
    unrelated, _ = _noisy_pair(50, seed=8)
    assert len(_match(requester, unrelated, 0.8)) == 0


def test_ambiguity_rule_withholds_matches_with_a_close_rival() -> None:
    sim = np.array([0.95, 0.94, 0.90, 0.85])
    rows0, rows1 = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2])
    matches = solve_one_to_one(sim, rows0, rows1)
    assert list(
        zip(matches.requester_rows.tolist(), matches.custodian_rows.tolist(), strict=True)
    ) == [(0, 0), (1, 1), (2, 2)]
    # (0, 0) has the rival (0, 1) 0.01 below it; (1, 1) has the rival (0, 1) above it.
    assert ambiguous(sim, rows0, rows1, matches, 0.02).tolist() == [True, True, False]
    assert ambiguous(sim, rows0, rows1, matches, 0.005).tolist() == [False, True, False]
    assert ambiguous(sim, rows0, rows1, matches, 0.0).tolist() == [False, False, False]
