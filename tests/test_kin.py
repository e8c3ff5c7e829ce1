"""A custodian that holds people more than once: the kin of a requester record's best candidate
are set aside where the agreement says so (matching/kin.py)."""

from __future__ import annotations

import numpy as np
import pytest
from support.index import assert_same

from blindlink.benchmarking.quality import released_quality
from blindlink.matching.decision import Decisions, PairStatus, candidates, decide, link
from blindlink.matching.engine import SharedEncodings
from blindlink.matching.executors import SerialExecutor
from blindlink.matching.rules import CalibratedThreshold, DecisionRule, FixedThreshold, Target

BITS = 1024
# The fallback threshold, the kin cut, lies in the matches' range of these encodings (0.69 to
# 0.78 between two records of one person, about 0.3 between two people).
CALIBRATED = DecisionRule(
    CalibratedThreshold(Target.BEST_F_STAR, (0.5, 0.95), 0.6), custodian_duplicates=True
)


def _copy(rng: np.random.Generator, person: np.ndarray) -> np.ndarray:
    """A record of `person`: each of its bits lost with probability 0.2, a few others set."""
    return (person & (rng.random(BITS) > 0.2)) | (rng.random(BITS) < 0.02)


def _people(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.random((count, BITS)) < 0.25


def held_repeatedly(seed: int, shared: int = 600) -> tuple[SharedEncodings, set[tuple[int, int]]]:
    """1500 requester records, `shared` of whose people the custodian holds; the custodian
    holds each of its 2000 people one to three times (in shuffled order); true pairs: every
    custodian record of a requester record's person."""
    rng = np.random.default_rng(seed)
    custodian_people = _people(rng, 2000)
    requester = [_copy(rng, person) for person in custodian_people[:shared]]
    requester += [_copy(rng, person) for person in _people(rng, 1500 - shared)]
    owners = np.repeat(np.arange(2000), rng.integers(1, 4, 2000))
    owners = owners[rng.permutation(len(owners))]
    custodian = [_copy(rng, custodian_people[owner]) for owner in owners]
    truth = {(int(owner), row) for row, owner in enumerate(owners.tolist()) if owner < shared}
    shared = SharedEncodings.of(np.packbits(requester, axis=1), np.packbits(custodian, axis=1))
    return shared, truth


def _decided(rule: DecisionRule, seed: int = 1) -> tuple[Decisions, set[tuple[int, int]]]:
    shared, truth = held_repeatedly(seed)
    return link(shared, rule, SerialExecutor(), 1), truth


def _quality(decisions: Decisions, truth: set[tuple[int, int]]) -> tuple[float, float]:
    """True precision, and recall over the requester records with a partner."""
    true = released_quality(decisions, truth)
    return true["precision"], true["recall"]


def test_without_the_agreement_saying_so_a_custodians_repeated_people_stop_the_model() -> None:
    """The runner-ups of most matched records are the person again: no model, the fallback."""
    decisions, _ = _decided(DecisionRule(CALIBRATED.threshold))
    assert decisions.estimates is None
    assert decisions.note.startswith("fallback threshold: ")


def test_a_custodian_that_holds_people_repeatedly_is_decided_by_the_model() -> None:
    """Every partner is found; the recall estimate, the model's weakest, is 0.04 low here."""
    decisions, truth = _decided(CALIBRATED)
    assert decisions.estimates is not None, decisions.note
    assert "set aside as its kin" in decisions.note
    precision, recall = _quality(decisions, truth)
    assert precision >= 0.99 and recall >= 0.98
    assert abs(decisions.estimates.precision - precision) <= 0.01
    assert abs(decisions.estimates.recall - recall) <= 0.05


def test_without_partners_the_people_held_repeatedly_are_not_taken_for_matches() -> None:
    """Nobody shared: each record's best candidate and its kin are all another person. Setting
    the kin aside leaves runner-ups that show the best non-match, so nothing is modelled or
    released."""
    shared, _ = held_repeatedly(4, shared=0)
    decisions = link(shared, CALIBRATED, SerialExecutor(), 1)
    assert decisions.estimates is None
    assert decisions.count(PairStatus.MATCH) == 0


def test_each_requester_record_is_released_with_one_custodian_record_of_its_person() -> None:
    decisions, truth = _decided(CALIBRATED)
    released = decisions.status == PairStatus.MATCH
    assert len(np.unique(decisions.requester_rows[released])) == int(released.sum())
    people = {r for r, _ in truth}
    assert {int(r) for r in decisions.requester_rows[released]} <= people | set(range(600, 1500))


def test_kin_do_not_withhold_a_match_as_rivals() -> None:
    """With an ambiguity margin, the person's other records would be rivals within it."""
    margin = 0.1
    kept = DecisionRule(FixedThreshold(0.6), ambiguity_margin=margin)
    withheld, truth = _decided(kept)
    aside, _ = _decided(
        DecisionRule(FixedThreshold(0.6), ambiguity_margin=margin, custodian_duplicates=True)
    )
    assert withheld.count(PairStatus.WITHHELD) > 100
    assert aside.count(PairStatus.WITHHELD) < 10
    assert _quality(aside, truth)[1] >= 0.98


def test_a_fixed_rule_sets_aside_kin_at_its_threshold() -> None:
    decisions, _ = _decided(DecisionRule(FixedThreshold(0.6), custodian_duplicates=True))
    assert decisions.note.startswith("fixed threshold")
    assert "within Dice 0.600 of a record's best one set aside as its kin" in decisions.note


def test_kin_decisions_are_deterministic() -> None:
    first, _ = _decided(CALIBRATED, seed=2)
    second, _ = _decided(CALIBRATED, seed=2)
    assert_same(second, first)
    assert first.estimates == second.estimates


def test_setting_kin_aside_needs_the_custodians_encodings() -> None:
    shared, _ = held_repeatedly(3)
    found = candidates(shared, CALIBRATED, SerialExecutor(), 1)
    with pytest.raises(ValueError, match="custodian's encodings"):
        decide(found, len(shared.requester), CALIBRATED)
