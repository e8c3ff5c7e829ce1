"""Matching: sliced candidate generation equals one anonlink call; 1:1 solving."""

import numpy as np
import pytest
from anonlink.candidate_generation import find_candidate_pairs
from anonlink.similarities import dice_coefficient_accelerated
from anonlink.solving import greedy_solve

from blindlink.matching import linkage
from blindlink.matching.linkage import match, to_bitarrays


def _noisy_pair(n: int, seed: int) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    base = rng.random((n, 256)) < 0.3
    noisy = base ^ (rng.random((n, 256)) < 0.04)
    order = rng.permutation(n)
    return (
        to_bitarrays(np.packbits(base, axis=1).tobytes(), 256),
        to_bitarrays(np.packbits(noisy[order], axis=1).tobytes(), 256),
    )


def test_sliced_matching_equals_single_anonlink_call(monkeypatch: pytest.MonkeyPatch) -> None:
    requester, custodian = _noisy_pair(600, seed=3)
    monkeypatch.setattr(linkage, "SLICE_COMPARISONS", 600 * 37)  # many uneven slices
    updates: list[tuple[int, int]] = []
    result = match(requester, custodian, 0.6, lambda done, total: updates.append((done, total)))

    candidates = find_candidate_pairs([requester, custodian], dice_coefficient_accelerated, 0.6)
    expected = sorted((dict(g)[0], dict(g)[1]) for g in greedy_solve(candidates))
    assert (
        list(zip(result.requester_rows.tolist(), result.custodian_rows.tolist(), strict=True))
        == expected
    )
    assert len(updates) > 10
    assert [d for d, _ in updates] == sorted(d for d, _ in updates)
    assert updates[-1] == (600 * 600, 600 * 600)


def test_matches_are_one_to_one_with_their_similarity() -> None:
    requester, custodian = _noisy_pair(300, seed=5)
    result = match(requester, custodian, 0.5)
    assert len(set(result.requester_rows.tolist())) == len(result)
    assert len(set(result.custodian_rows.tolist())) == len(result)
    for r, c, s in zip(
        result.requester_rows, result.custodian_rows, result.similarities, strict=True
    ):
        a, b = requester[r], custodian[c]
        assert s == pytest.approx(2 * (a & b).count() / (a.count() + b.count()))
        assert s >= 0.5


def test_unrelated_records_give_no_matches() -> None:
    requester, _ = _noisy_pair(50, seed=7)
    unrelated, _ = _noisy_pair(50, seed=8)
    assert len(match(requester, unrelated, 0.8)) == 0
    assert len(match(requester, [], 0.8)) == 0
