"""The attacks on small generated data: they succeed on unhardened encodings, fail on strong
hardening, and score themselves honestly."""

from __future__ import annotations

import numpy as np
import pytest

from blindlink.attacks import AttackResult, pattern_mining_attack, seeded_similarity_attack
from blindlink.attacks.block_frequency import attackable, block_frequency_attack
from blindlink.attacks.name_tables import build_table
from blindlink.attacks.plaintext import tokenize, weighted_dice
from blindlink.attacks.similarity_graph import link_by_profiles
from blindlink.benchmarking.record_pairs import LinkedPair, generated_pair
from blindlink.encoding.schema import LinkageSchema
from blindlink.hardening import encode_with_steps
from blindlink.matching.blocking import KeyPart

SECRET = b"attack test secret"
DIFFUSION = [{"kind": "diffusion", "t": 8}]


@pytest.fixture(scope="module")
def small() -> LinkedPair:
    return generated_pair(300, 1.0, seed=11)


@pytest.fixture(scope="module")
def population() -> LinkedPair:
    return generated_pair(5000, 0.5, seed=12)


def seeded(pair: LinkedPair, schema: LinkageSchema, steps: list, seeds: int) -> AttackResult:
    return seeded_similarity_attack(
        encode_with_steps(pair.custodian, schema, SECRET, steps),
        tokenize(pair.requester, schema),
        pair.truth,
        seeds,
        np.random.default_rng(0),
    )


def test_seeded_attack_reidentifies_unhardened_encodings(
    small: LinkedPair, schema: LinkageSchema
) -> None:
    result = seeded(small, schema, [], seeds=30)
    assert result.targets == 270  # overlapping records the attacker did not already know
    assert result.reidentification_rate > 0.8
    assert result.confident_precision > 0.9
    assert "lower bound" in result.label


def test_seeded_attack_fails_on_heavy_diffusion(small: LinkedPair, schema: LinkageSchema) -> None:
    result = seeded(small, schema, DIFFUSION, seeds=30)
    assert result.reidentification_rate < 0.05


def test_seeded_attack_without_seeds_makes_no_guesses(
    small: LinkedPair, schema: LinkageSchema
) -> None:
    result = seeded(small, schema, [], seeds=0)
    assert (result.guesses, result.correct, result.reidentification_rate) == (0, 0, 0.0)


def test_pattern_mining_beats_guessing_on_unhardened_encodings(
    population: LinkedPair, schema: LinkageSchema
) -> None:
    surname = schema.columns.index("surname")
    truth = [row[surname] for row in population.custodian]
    result = pattern_mining_attack(
        encode_with_steps(population.custodian, schema, SECRET, []), truth, schema
    )
    # Guessing the commonest surname for everyone gets about 1%.
    assert result.chance_rate < 0.03
    assert result.reidentification_rate > 3 * result.chance_rate
    assert result.confident_precision > 0.3

    hardened = pattern_mining_attack(
        encode_with_steps(population.custodian, schema, SECRET, DIFFUSION), truth, schema
    )
    assert hardened.reidentification_rate < result.chance_rate


def test_profile_linking_stops_when_every_encoding_is_an_anchor(
    small: LinkedPair, schema: LinkageSchema
) -> None:
    """Seeds that cover every encoding leave nothing to link, and the attack says so instead
    of failing on an empty score matrix."""
    encodings = encode_with_steps(small.custodian[:20], schema, SECRET, [])
    bits = np.unpackbits(encodings, axis=1).astype(np.float32)
    anchors = [(row, row) for row in range(20)]
    guesses = link_by_profiles(bits, tokenize(small.requester[:30], schema), anchors)
    assert len(guesses.confident) == 0


def test_weighted_dice_weights_tokens_by_their_bits(schema: LinkageSchema) -> None:
    rows = [
        ["1", "Ann", "Lee", "", "", "", "", ""],
        ["2", "Ann", "Loo", "", "", "", "", ""],
    ]
    tokens = tokenize(rows, schema)
    # given name: " A","An","nn","n " shared (4 x 25 bits); surname " L" shared, "Le","ee","e "
    # vs "Lo","oo","o " not: 2 * 125 / (200 + 200).
    similarity = weighted_dice(tokens, np.array([0]), np.array([1]))
    assert similarity[0, 0] == pytest.approx(2 * 125 / 400)


def test_name_table_shares_and_edge_tokens() -> None:
    def bigrams(name: str) -> set[str]:
        return {f" {name} "[i : i + 2] for i in range(len(name) + 1)}

    table = build_table({"Ann": 3, "Al": 1}, bigrams)
    assert table.shares.sum() == pytest.approx(1)
    frequency = dict(zip(table.vocabulary, table.token_frequency, strict=True))
    assert frequency[" A"] == pytest.approx(1.0)
    assert frequency["n "] == pytest.approx(0.75)
    assert {table.vocabulary[i] for i in table.edge_tokens(2, end=False)} == {" A"}
    assert {table.vocabulary[i] for i in table.edge_tokens(2, end=True)} == {"n ", "l "}


def test_attack_result_rates() -> None:
    result = AttackResult(
        "x",
        targets=200,
        guesses=50,
        correct=20,
        confident=10,
        confident_correct=9,
        chance_rate=0.01,
    )
    assert result.reidentification_rate == 0.1
    assert result.confident_precision == 0.9
    assert result.to_dict()["reidentification_rate"] == 0.1


NAME_PAIR = (KeyPart("given_name"), KeyPart("surname"))


def test_block_frequency_attack_labels_blocks_by_size() -> None:
    """Blocks sized as the public tables predict are labelled right, largest first; sizes that
    contradict the tables give wrong labels."""
    common = [("james", "smith"), ("john", "smith"), ("robert", "smith")]
    truth = [
        name for name, count in zip(common, (400, 200, 100), strict=True) for _ in range(count)
    ]
    truth += [(f"given{i}", f"surname{i}") for i in range(2000)]  # names no list has, each once
    truth_keys = {name: i + 1 for i, name in enumerate(dict.fromkeys(truth))}
    keys = np.array([truth_keys[name] for name in truth], dtype=np.uint64)

    result = block_frequency_attack(keys, truth, NAME_PAIR)
    assert (result.targets, result.correct) == (len(truth), 700)
    assert result.guesses == len(truth)  # every block gets a label
    assert result.confident_correct <= result.confident

    # Sizes that contradict the tables: every label is wrong.
    shuffled = [
        name for name, count in zip(common, (100, 400, 200), strict=True) for _ in range(count)
    ]
    shuffled += truth[700:]
    shuffled_keys = np.array([truth_keys[name] for name in shuffled], dtype=np.uint64)
    assert block_frequency_attack(shuffled_keys, shuffled, NAME_PAIR).correct == 0


def test_block_frequency_attack_skips_records_without_a_key_and_refuses_other_keys() -> None:
    truth = [("james", "smith")] * 30 + [("", "smith")] * 5
    keys = np.array([7] * 30 + [0] * 5, dtype=np.uint64)
    result = block_frequency_attack(keys, truth, NAME_PAIR)
    assert (result.targets, result.correct) == (30, 30)
    assert not attackable((KeyPart("surname", prefix=3),))
    assert not attackable((KeyPart("surname"), KeyPart("date_of_birth")))
    assert attackable((KeyPart("surname"),))
    with pytest.raises(ValueError):
        block_frequency_attack(keys, truth, (KeyPart("date_of_birth"),))
