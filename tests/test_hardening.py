"""Hardening steps: validation, lengths, and each step's defining property."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from blindlink.encoding.encoder import encode_rows
from blindlink.encoding.schema import LinkageSchema
from blindlink.hardening import (
    HardeningError,
    apply_steps,
    encode_with_steps,
    output_bit_length,
    salt_values,
    validate_steps,
)

SECRET = b"hardening test secret"
SALT = {"kind": "salt", "field": "date_of_birth", "part": "year"}


def packed(widths: tuple[int, int]) -> st.SearchStrategy[np.ndarray]:
    """Encodings: uint8 arrays of shape (records, bytes)."""
    return st.tuples(st.integers(1, 8), st.sampled_from(widths)).flatmap(
        lambda shape: arrays(np.uint8, shape)
    )


def bits(encodings: np.ndarray) -> np.ndarray:
    return np.unpackbits(encodings, axis=1)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    x, y = bits(a[None])[0], bits(b[None])[0]
    return 2 * float((x & y).sum()) / float(x.sum() + y.sum())


def person(year: str, given_name: str = "Margaret") -> list[str]:
    return [
        "R1",
        given_name,
        "Whitfield",
        f"{year}-04-17",
        "F",
        "12 Acacia Street",
        "Ashvale",
        "4105",
    ]


# --- validation and lengths ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{"kind": "fold"}], "hardening[0].kind: must be one of"),
        (
            [{"kind": "rule90"}, {"kind": "randomized_response", "q": 0.1}],
            "hardening[1].q: unknown key",
        ),
        ([{"kind": "randomized_response", "pp": 0.1}], "did you mean 'p'?"),
        ([{"kind": "diffusion"}], "hardening[0].t: missing"),
        ([{"kind": "randomized_response", "p": 0.7}], "hardening[0].p: must be a probability"),
        ([{"kind": "randomized_response", "p": True}], "hardening[0].p: must be"),
        ([{"kind": "xor_fold", "folds": 1.5}], "hardening[0].folds: must be a whole number"),
        ([{"kind": "salt", "field": "date_of_birth", "part": "month"}], "hardening[0].part"),
        ([{"kind": "balance"}, SALT], "hardening[1].kind: a salt step acts while encoding"),
        (["balance"], "hardening[0]: each step must be an object"),
    ],
)
def test_invalid_steps_are_refused_naming_index_and_key(steps: list, message: str) -> None:
    with pytest.raises(HardeningError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_steps(steps)


def test_steps_must_be_a_list() -> None:
    with pytest.raises(HardeningError, match="must be a list"):
        validate_steps({"kind": "balance"})  # type: ignore[arg-type]


def test_output_bit_length_follows_the_steps() -> None:
    assert output_bit_length(1024, []) == 1024
    assert output_bit_length(1024, [{"kind": "xor_fold", "folds": 2}]) == 256
    assert output_bit_length(1024, [SALT, {"kind": "balance"}, {"kind": "rule90"}]) == 2048
    with pytest.raises(HardeningError, match=r"hardening\[0\].folds"):
        output_bit_length(8, [{"kind": "xor_fold", "folds": 1}])
    with pytest.raises(HardeningError, match=r"hardening\[0\].t"):
        output_bit_length(16, [{"kind": "diffusion", "t": 17}])


def test_apply_steps_refuses_bad_arrays() -> None:
    with pytest.raises(HardeningError, match="2-D uint8"):
        apply_steps(np.zeros(16, dtype=np.uint8), [], SECRET)


# --- each step's defining property -----------------------------------------------------------


@given(packed((2, 4, 128)))
def test_xor_fold_halves_the_length_and_xors_the_halves(encodings: np.ndarray) -> None:
    folded = apply_steps(encodings, [{"kind": "xor_fold", "folds": 1}], SECRET)
    half = encodings.shape[1] // 2
    assert folded.shape == (len(encodings), half)
    assert (folded == encodings[:, :half] ^ encodings[:, half:]).all()


@given(packed((1, 16, 128)))
def test_balancing_sets_exactly_half_the_bits_and_keeps_hamming_distances(
    encodings: np.ndarray,
) -> None:
    balanced = apply_steps(encodings, [{"kind": "balance"}], SECRET)
    assert balanced.shape == (len(encodings), 2 * encodings.shape[1])
    assert (bits(balanced).sum(1) == 8 * encodings.shape[1]).all()
    original_distance = (bits(encodings)[:, None] != bits(encodings)[None]).sum(2)
    balanced_distance = (bits(balanced)[:, None] != bits(balanced)[None]).sum(2)
    assert (balanced_distance == 2 * original_distance).all()


def test_balancing_permutation_is_keyed_by_the_secret() -> None:
    encodings = np.random.default_rng(1).integers(0, 256, (5, 64), dtype=np.uint8)
    steps = [{"kind": "balance"}]
    same = apply_steps(encodings, steps, SECRET)
    assert (apply_steps(encodings, steps, SECRET) == same).all()
    assert (apply_steps(encodings, steps, b"another secret") != same).any()


@settings(max_examples=50)
@given(packed((1, 3, 16)))
def test_rule90_matches_a_direct_loop(encodings: np.ndarray) -> None:
    result = bits(apply_steps(encodings, [{"kind": "rule90"}], SECRET))
    source = bits(encodings)
    width = source.shape[1]
    for row in range(len(source)):
        for i in range(width):
            assert result[row, i] == source[row, (i - 1) % width] ^ source[row, (i + 1) % width]


@pytest.mark.parametrize("p", [0.02, 0.2])
def test_randomized_response_flips_about_p_of_the_bits(p: float) -> None:
    encodings = np.random.default_rng(2).integers(0, 256, (400, 128), dtype=np.uint8)
    flipped = bits(apply_steps(encodings, [{"kind": "randomized_response", "p": p}], SECRET))
    rate = float((flipped != bits(encodings)).mean())
    assert abs(rate - p) < 5 * np.sqrt(p * (1 - p) / flipped.size)


def test_randomized_response_is_fresh_on_every_application() -> None:
    encodings = np.zeros((50, 128), dtype=np.uint8)
    steps = [{"kind": "randomized_response", "p": 0.05}]
    first, second = apply_steps(encodings, steps, SECRET), apply_steps(encodings, steps, SECRET)
    assert (first != second).any()
    # Identical inputs in one call get independent flips too: no per-record fixed seed.
    assert (first[0] != first[1:]).any(axis=1).all()


@pytest.mark.parametrize("t", [2, 8])
def test_diffusion_output_bits_each_depend_on_exactly_t_inputs(t: int) -> None:
    width = 256
    unit_inputs = np.packbits(np.eye(width, dtype=np.uint8), axis=1)  # row i: only bit i set
    response = bits(apply_steps(unit_inputs, [{"kind": "diffusion", "t": t}], SECRET))
    # Diffusion is linear over GF(2): column j lists the input bits output j depends on.
    assert (response.sum(0) == t).all()


def test_diffusion_is_linear_deterministic_and_keyed() -> None:
    rng = np.random.default_rng(3)
    a, b = (rng.integers(0, 256, (6, 128), dtype=np.uint8) for _ in range(2))
    steps = [{"kind": "diffusion", "t": 4}]
    diffused = apply_steps(a, steps, SECRET)
    assert (apply_steps(a, steps, SECRET) == diffused).all()
    assert (apply_steps(a ^ b, steps, SECRET) == diffused ^ apply_steps(b, steps, SECRET)).all()
    assert (apply_steps(a, steps, b"another secret") != diffused).any()


# --- salting ---------------------------------------------------------------------------------


def test_salt_values_take_the_year_and_leave_missing_dates_empty() -> None:
    columns = ["id", "given_name", "surname", "date_of_birth"]
    rows = [["1", "A", "B", "1971-02-03"], ["2", "A", "B", ""], ["3", "A", "B", "19650102"]]
    assert salt_values(rows, columns, [{"kind": "rule90"}]) is None
    assert salt_values(rows, columns, [SALT]) == ["1971", "", "1965"]
    whole = {"kind": "salt", "field": "surname", "part": "value"}
    assert salt_values(rows, columns, [whole]) == ["B", "B", "B"]


def test_salt_errors_name_the_field_but_never_the_value() -> None:
    columns = ["id", "date_of_birth"]
    with pytest.raises(HardeningError, match="no column 'dob'"):
        salt_values([["1", "1971-02-03"]], columns, [{**SALT, "field": "dob"}])
    with pytest.raises(HardeningError, match="year first") as raised:
        salt_values([["1", "03/02/1971"]], columns, [SALT])
    assert "1971" not in str(raised.value)


def test_unhardened_encoding_equals_the_encoder(schema: LinkageSchema) -> None:
    rows = [person("1971"), person("1984", "Ann")]
    expected = np.frombuffer(encode_rows(rows, schema, SECRET), dtype=np.uint8).reshape(2, -1)
    assert (encode_with_steps(rows, schema, SECRET, []) == expected).all()


def test_salting_keeps_a_person_identical_and_makes_another_year_unrelated(
    schema: LinkageSchema,
) -> None:
    requester = encode_with_steps([person("1971")], schema, SECRET, [SALT])
    custodian = encode_with_steps([person("1971")], schema, SECRET, [SALT])
    assert (requester == custodian).all()

    other_year = [person("1971"), person("1972")]
    plain = encode_with_steps(other_year, schema, SECRET, [])
    salted = encode_with_steps(other_year, schema, SECRET, [SALT])
    unrelated = encode_with_steps(
        [
            person("1971"),
            ["R2", "Tom", "Abbott", "1971-09-30", "M", "3 Elm Road", "Riverton", "3220"],
        ],
        schema,
        SECRET,
        [],
    )
    assert dice(plain[0], plain[1]) > 0.9
    # With the year as salt, the same name shares no more bits than unrelated people do.
    assert dice(salted[0], salted[1]) < dice(unrelated[0], unrelated[1]) + 0.1
    assert dice(salted[0], salted[1]) < 0.7
