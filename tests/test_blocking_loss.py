"""The share of matches keyed blocking never compares, estimated from the keys the compared
matches share."""

from __future__ import annotations

import numpy as np
import pytest

from blindlink.encoding.blocking_keys import DEFAULT_SCHEMA_KEYS
from blindlink.matching.blocking import KeyBlocking
from blindlink.matching.blocking_loss import missed_share

DEFAULT_KEYS = KeyBlocking.from_document(DEFAULT_SCHEMA_KEYS)


def _shared_keys(
    blocking: KeyBlocking, agreement: dict[str, float], matches: int, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Keys shared by `matches` simulated matches whose fields agree independently at these
    rates, as compared (at least one key shared), and the true share sharing none."""
    rng = np.random.default_rng(seed)
    agrees = {f: rng.random(matches) < rate for f, rate in agreement.items()}
    shared = np.stack(
        [np.logical_and.reduce([agrees[p.field] for p in key]) for key in blocking.keys], axis=1
    )
    compared = shared.any(axis=1)
    return shared[compared], 1.0 - compared.mean()


@pytest.mark.parametrize("rate", [0.95, 0.8, 0.6])
def test_the_missed_share_follows_from_the_keys_compared_matches_share(rate: float) -> None:
    agreement = {
        "given_name": rate,
        "surname": rate - 0.05,
        "date_of_birth": rate,
        "street_address": rate,
        "postcode": 0.9,
    }
    shared, missed = _shared_keys(DEFAULT_KEYS, agreement, 200_000)
    estimate = missed_share(DEFAULT_KEYS, shared, np.ones(len(shared)))
    assert estimate is not None and missed > 0.001
    assert estimate == pytest.approx(missed, rel=0.1, abs=0.0005)


def test_a_non_match_counts_only_by_its_match_probability() -> None:
    agreement = dict.fromkeys(("given_name", "surname", "date_of_birth"), 0.8)
    agreement |= {"street_address": 0.8, "postcode": 0.8}
    shared, missed = _shared_keys(DEFAULT_KEYS, agreement, 100_000)
    # Non-matches sharing one given name + surname key each, at probability 0.
    others = np.zeros((50_000, 4), dtype=bool)
    others[:, 0] = True
    both = np.vstack([shared, others])
    weights = np.r_[np.ones(len(shared)), np.zeros(len(others))]
    estimate = missed_share(DEFAULT_KEYS, both, weights)
    assert estimate == pytest.approx(missed, rel=0.1)


@pytest.mark.parametrize(
    "keys",
    [
        [[{"field": "surname"}, {"field": "date_of_birth"}]],  # one key: nothing to compare
        # Surname appears in every key: its rate scales every pattern alike.
        [
            [{"field": "surname"}, {"field": "given_name"}],
            [{"field": "surname"}, {"field": "date_of_birth"}],
        ],
    ],
)
def test_keys_that_do_not_determine_the_missed_share_give_no_estimate(
    keys: list[list[dict[str, str]]],
) -> None:
    blocking = KeyBlocking.from_document(keys)
    agreement = dict.fromkeys(("given_name", "surname", "date_of_birth"), 0.8)
    shared, _ = _shared_keys(blocking, agreement, 50_000)
    assert missed_share(blocking, shared, np.ones(len(shared))) is None


def test_too_few_matches_or_too_many_fields_give_no_estimate() -> None:
    shared = np.ones((10, 4), dtype=bool)
    assert missed_share(DEFAULT_KEYS, shared, np.ones(10)) is None
    many = KeyBlocking.from_document([[{"field": f"f{i}"}, {"field": f"g{i}"}] for i in range(9)])
    assert missed_share(many, np.ones((100, 9), dtype=bool), np.ones(100)) is None
