"""blindlink's per-value encoder gives clkhash's own CLKs, byte for byte, across hash types,
strategies, comparisons, formats and missing values, and names the value it refuses."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

import pytest
from clkhash import clk
from clkhash.field_formats import InvalidEntryError
from clkhash.key_derivation import generate_key_lists
from conftest import clkhash_schema
from hypothesis import HealthCheck, given, settings
from support.schema_strategies import schema_with_rows

from blindlink.encoding.clk_encoder import CACHE_ENTRIES, ClkEncoder, ValueProblem
from blindlink.encoding.fields import InvalidValue
from blindlink.encoding.schema import LinkageSchema, parse_schema

SECRET = b"clk encoder test secret"


def feature(identifier: str, fmt: dict[str, Any], **hashing: Any) -> dict[str, Any]:
    return {
        "identifier": identifier,
        "format": fmt,
        "hashing": {"missingValue": {"sentinel": ""}, **hashing},
    }


def schema_document(hash_type: dict[str, Any], strategy_key: str, l_bits: int) -> dict[str, Any]:
    def strategy(k: int) -> dict[str, int]:
        return {strategy_key: k * (4 if strategy_key == "bitsPerFeature" else 1)}

    text = {"type": "string", "encoding": "utf-8", "case": "mixed", "maxLength": 40}
    return {
        "version": 3,
        "clkConfig": {
            "l": l_bits,
            "kdf": {
                "type": "HKDF",
                "hash": "SHA256",
                "salt": "c2FsdA==",
                "info": "aW5mbw==",
                "keySize": 64,
            },
        },
        "features": [
            {"identifier": "id", "ignored": True},
            feature(
                "name",
                text,
                comparison={"type": "ngram", "n": 2, "positional": False},
                strategy=strategy(15),
                hash=hash_type,
            ),
            feature(
                "initials",
                text,
                comparison={"type": "ngram", "n": 1, "positional": True},
                strategy=strategy(9),
                hash=hash_type,
            ),
            feature(
                "dob",
                {"type": "date", "format": "%d/%m/%Y"},
                comparison={"type": "ngram", "n": 3, "positional": False},
                strategy=strategy(7),
                hash=hash_type,
            ),
            feature(
                "sex",
                {"type": "enum", "values": ["M", "F", "X"]},
                comparison={"type": "exact"},
                strategy=strategy(20),
                hash=hash_type,
            ),
            feature(
                "age",
                {"type": "integer", "minimum": 0, "maximum": 130},
                comparison={"type": "numeric", "thresholdDistance": 2, "resolution": 3},
                strategy=strategy(6),
                hash=hash_type,
            ),
        ],
    }


HASHES = [
    {"type": "blakeHash"},
    {"type": "doubleHash"},
    {"type": "doubleHash", "prevent_singularity": True},
]


def random_rows(count: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    names = ["Ann Lee", "Bob", "Zoë Ünal", "O'Neil", "Nguyễn Văn", "", "A", "Ann Lee"]
    rows = []
    for i in range(count):
        rows.append(
            [
                f"id{i}",
                rng.choice(names) + rng.choice(["", "x", "ie"]),
                rng.choice(["", "AB", "Q", "ÉÖ"]),
                rng.choice(
                    [
                        "",
                        f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/"
                        f"19{rng.randint(10, 99)}",
                    ]
                ),
                rng.choice(["", "M", "F", "X"]),
                rng.choice(["", str(rng.randint(0, 130))]),
            ]
        )
    return rows


def clkhash_bytes(rows: list[list[str]], schema: LinkageSchema, secret: bytes = SECRET) -> bytes:
    """clkhash's CLKs of the rows, with clkhash's own schema reading and key derivation."""
    parsed = clkhash_schema(schema)
    keys = generate_key_lists(
        secret,
        len(parsed.fields),
        key_size=parsed.kdf_key_size,
        salt=parsed.kdf_salt,
        info=parsed.kdf_info,
        kdf=parsed.kdf_type,
        hash_algo=parsed.kdf_hash,
    )
    encoded, _ = clk.hash_chunk(rows, keys, parsed)
    return b"".join(e.tobytes() for e in encoded)


@pytest.mark.parametrize("hash_type", HASHES, ids=lambda h: "-".join(map(str, h.values())))
@pytest.mark.parametrize("strategy_key", ["bitsPerToken", "bitsPerFeature"])
def test_same_clks_as_clkhash(hash_type: dict[str, Any], strategy_key: str) -> None:
    schema = parse_schema(schema_document(hash_type, strategy_key, 512))
    rows = random_rows(400, seed=len(strategy_key))
    assert ClkEncoder(schema, SECRET).encode(rows) == clkhash_bytes(rows, schema)


def test_same_clks_when_the_value_cache_starts_afresh(
    schema: LinkageSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("blindlink.encoding.clk_encoder.CACHE_ENTRIES", 3)
    assert CACHE_ENTRIES > 3
    rows = [
        [f"r{i}", f"Name{i % 5}", "Smith", "1970-01-0" + str(1 + i % 9), "F", "1 Road", "", ""]
        for i in range(50)
    ]
    encoder = ClkEncoder(schema, SECRET)
    assert encoder.encode(rows) == clkhash_bytes(rows, schema)
    assert max(len(f.cache) for f in encoder.fields) <= 3


def test_a_refused_value_is_named_by_row_and_column_without_the_value() -> None:
    schema = parse_schema(schema_document(HASHES[0], "bitsPerToken", 512))
    rows = random_rows(10, seed=3)
    bad = copy.deepcopy(rows)
    bad[6][3] = "31/02/1999"  # no such date
    bad[8][4] = "Q"  # a later problem is not the one reported
    problem = ClkEncoder(schema, SECRET).encode(bad)
    assert isinstance(problem, ValueProblem)
    assert (problem.row, problem.column, problem.field) == (6, 4, "dob")
    assert "31/02/1999" not in problem.message
    # A value refused once stays refused when it comes again (it is never cached as valid).
    again = ClkEncoder(schema, SECRET)
    assert isinstance(again.encode([bad[6]]), ValueProblem)
    assert isinstance(again.encode([bad[6]]), ValueProblem)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema_with_rows())
def test_random_schemas_validate_and_encode_as_clkhash_does(
    case: tuple[dict[str, Any], list[list[str]]],
) -> None:
    """Over random schemas and values: the same values refused, and the same CLKs, byte for
    byte, for the rows clkhash accepts."""
    document, rows = case
    schema = parse_schema(document)
    theirs = clkhash_schema(schema)
    valid = []
    for row in rows:
        refused = []
        for value, ours, spec in zip(row, schema.fields, theirs.fields, strict=True):
            refused.append(_refuses(ours.validate, value, InvalidValue))
            assert refused[-1] == _refuses(spec.validate, value, InvalidEntryError), (
                ours.identifier,
                value,
            )
        if not any(refused):
            valid.append(row)
    encoder = ClkEncoder(schema, SECRET)
    assert encoder.encode(valid) == clkhash_bytes(valid, schema)


def _refuses(check: Callable[[str], None], value: str, error: type[Exception]) -> bool:
    try:
        check(value)
    except error:
        return True
    return False
