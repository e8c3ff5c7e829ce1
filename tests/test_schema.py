"""Strict loading of clkhash v3 linkage schemas and their content hash."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from blindlink.encoding.schema import default_schema_path, load_schema, parse_schema
from blindlink.errors import SchemaError

Document = dict[str, Any]
Mutation = Callable[[Document], None]

COLUMNS = [
    "id",
    "given_name",
    "surname",
    "date_of_birth",
    "sex",
    "street_address",
    "city",
    "postcode",
]


def default_document() -> Document:
    return json.loads(default_schema_path().read_text(encoding="utf-8"))


def mutated(mutation: Mutation) -> Document:
    document = copy.deepcopy(default_document())
    mutation(document)
    return document


def rename(obj: Document, old: str, new: str) -> None:
    obj[new] = obj.pop(old)


def feature(document: Document, name: str) -> Document:
    return next(f for f in document["features"] if f["identifier"] == name)


def schema_error(document: Any, source: str = "s.json") -> str:
    with pytest.raises(SchemaError) as info:
        parse_schema(document, source=source)
    message = str(info.value)
    assert message.startswith(f"{source}: ")
    return message


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- the default schema ----------------------------------------------------------------------


def test_default_schema_loads() -> None:
    schema = load_schema(default_schema_path())
    assert schema.columns == COLUMNS
    assert len(schema.fields) == 8
    assert schema.bit_length == 1024
    assert re.fullmatch(r"[0-9a-f]{64}", schema.sha256)
    assert schema.document == default_document()


def test_schema_hash_is_stable_across_loads_and_formatting(tmp_path: Path) -> None:
    first = load_schema(default_schema_path()).sha256
    assert load_schema(default_schema_path()).sha256 == first
    assert parse_schema(default_document()).sha256 == first
    # Re-indented, keys in another order: the same schema, the same hash.
    reformatted = write(tmp_path / "s.json", json.dumps(default_document(), sort_keys=True))
    assert load_schema(reformatted).sha256 == first


def _set(path: list[str], value: Any) -> Mutation:
    """Set a value by key path; a column name as first key selects that feature."""

    def mutation(document: Document) -> None:
        target = feature(document, path[0]) if path[0] in COLUMNS else document[path[0]]
        for key in path[1:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutation


@pytest.mark.parametrize(
    "mutation",
    [
        _set(["clkConfig", "l"], 2048),
        _set(["clkConfig", "kdf", "salt"], "SGVsbG8gd29ybGQ="),
        _set(["clkConfig", "kdf", "info"], "b3RoZXI="),
        _set(["clkConfig", "kdf", "keySize"], 32),
        _set(["given_name", "hashing", "strategy", "bitsPerToken"], 26),
        _set(["surname", "hashing", "comparison", "n"], 3),
        _set(["surname", "hashing", "comparison", "positional"], True),
        _set(["city", "hashing", "missingValue", "sentinel"], "N/A"),
        _set(["postcode", "format", "pattern"], "[0-9]{5}"),
        _set(["date_of_birth", "format", "format"], "%d/%m/%Y"),
        _set(["sex", "format", "values"], ["M", "F", "X"]),
    ],
    ids=[
        "l",
        "salt",
        "info",
        "keySize",
        "bitsPerToken",
        "ngram-n",
        "positional",
        "sentinel",
        "pattern",
        "date-format",
        "enum-values",
    ],
)
def test_schema_hash_changes_when_a_setting_changes(mutation: Mutation) -> None:
    default = parse_schema(default_document()).sha256
    changed = parse_schema(mutated(mutation))
    assert changed.sha256 != default
    assert re.fullmatch(r"[0-9a-f]{64}", changed.sha256)


# --- unknown keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutation", "location", "bad", "good"),
    [
        (lambda d: rename(d, "features", "feature"), "", "feature", "features"),
        (lambda d: rename(d, "clkConfig", "clkconfig"), "", "clkconfig", "clkConfig"),
        (lambda d: rename(d["clkConfig"], "kdf", "kfd"), "clkConfig", "kfd", "kdf"),
        (
            lambda d: rename(d["clkConfig"]["kdf"], "keySize", "keysize"),
            "clkConfig.kdf",
            "keysize",
            "keySize",
        ),
        (
            lambda d: rename(d["features"][0], "ignored", "ignore"),
            "features[0]",
            "ignore",
            "ignored",
        ),
        (
            lambda d: rename(d["features"][1], "identifier", "identifer"),
            "features[1]",
            "identifer",
            "identifier",
        ),
        (
            lambda d: rename(d["features"][2]["format"], "maxLength", "maxLenght"),
            "features[2].format",
            "maxLenght",
            "maxLength",
        ),
        (
            lambda d: rename(d["features"][3]["hashing"], "strategy", "stratgy"),
            "features[3].hashing",
            "stratgy",
            "strategy",
        ),
        (
            lambda d: rename(d["features"][1]["hashing"]["comparison"], "positional", "postional"),
            "features[1].hashing.comparison",
            "postional",
            "positional",
        ),
        (
            lambda d: rename(d["features"][4]["hashing"]["hash"], "type", "tpye"),
            "features[4].hashing.hash",
            "tpye",
            "type",
        ),
        (
            lambda d: rename(
                d["features"][5]["hashing"]["strategy"], "bitsPerToken", "bitsPerTokens"
            ),
            "features[5].hashing.strategy",
            "bitsPerTokens",
            "bitsPerToken",
        ),
        (
            lambda d: rename(d["features"][7]["hashing"]["missingValue"], "sentinel", "sentinal"),
            "features[7].hashing.missingValue",
            "sentinal",
            "sentinel",
        ),
    ],
    ids=[
        "top-level",
        "top-level-case",
        "clkConfig",
        "kdf",
        "ignored-feature",
        "feature",
        "format",
        "hashing",
        "comparison",
        "hash",
        "strategy",
        "missingValue",
    ],
)
def test_misspelt_key_is_named_with_its_path_and_a_suggestion(
    mutation: Mutation, location: str, bad: str, good: str
) -> None:
    message = schema_error(mutated(mutation))
    prefix = f"s.json: {location}: " if location else "s.json: "
    assert message == f"{prefix}unknown key '{bad}' (did you mean '{good}'?)"


def test_unknown_key_without_a_close_match_has_no_suggestion() -> None:
    message = schema_error(mutated(lambda d: d["clkConfig"].update(zzz=1)))
    assert message == "s.json: clkConfig: unknown key 'zzz'"


@pytest.mark.parametrize("folds", [0, 1, 2])
def test_xor_folds_is_rejected_because_clkhash_ignores_it(folds: int) -> None:
    message = schema_error(mutated(lambda d: d["clkConfig"].update(xorFolds=folds)))
    assert "clkConfig.xorFolds is not supported" in message
    assert "clkhash 0.18 ignores it" in message


# --- version, shape and size -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutation", "found"),
    [
        (lambda d: d.update(version=2), "2"),
        (lambda d: d.update(version=1), "1"),
        (lambda d: d.update(version="3"), "'3'"),
        (lambda d: d.pop("version"), "None"),
    ],
    ids=["v2", "v1", "string", "missing"],
)
def test_only_version_3_is_accepted(mutation: Mutation, found: str) -> None:
    message = schema_error(mutated(mutation))
    assert message == (
        f"s.json: only clkhash schema version 3 is supported (found version {found})"
    )


@pytest.mark.parametrize("document", [[], "schema", 3, None, [default_document()]])
def test_document_that_is_not_an_object_is_rejected(document: Any) -> None:
    assert schema_error(document) == "s.json: the schema must be a JSON object"


@pytest.mark.parametrize("bits", [1020, 1001, 12])
def test_bit_length_not_a_multiple_of_8_is_rejected(bits: int) -> None:
    message = schema_error(mutated(lambda d: d["clkConfig"].update(l=bits)))
    assert message == f"s.json: clkConfig.l must be a multiple of 8 (found {bits})"


def test_bit_length_that_is_a_multiple_of_8_is_accepted() -> None:
    assert parse_schema(mutated(lambda d: d["clkConfig"].update(l=2048))).bit_length == 2048


def test_clkhash_validation_errors_are_reported_as_schema_errors() -> None:
    message = schema_error(mutated(lambda d: d["clkConfig"].update(l=0)))
    assert "minimum of 1" in message


# --- files ---------------------------------------------------------------------------------------


def test_schema_file_that_is_not_json(tmp_path: Path) -> None:
    path = write(tmp_path / "schema.json", "version: 3\nclkConfig: {}\n")
    with pytest.raises(SchemaError) as info:
        load_schema(path)
    assert str(info.value).startswith(f"{path}: not a valid UTF-8 JSON file (")


def test_schema_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_bytes(b'{"version": 3, "description": "M\xfcller"}')
    with pytest.raises(SchemaError) as info:
        load_schema(path)
    assert str(info.value).startswith(f"{path}: not a valid UTF-8 JSON file (")


def test_schema_file_holding_a_json_array(tmp_path: Path) -> None:
    path = write(tmp_path / "schema.json", json.dumps([default_document()]))
    with pytest.raises(SchemaError) as info:
        load_schema(path)
    assert str(info.value) == f"{path}: the schema must be a JSON object"


def test_schema_file_with_unknown_key_names_the_file(tmp_path: Path) -> None:
    document = mutated(
        lambda d: rename(d["features"][1]["hashing"]["comparison"], "positional", "postional")
    )
    path = write(tmp_path / "schema.json", json.dumps(document, indent=2))
    with pytest.raises(SchemaError) as info:
        load_schema(path)
    assert str(info.value) == (
        f"{path}: features[1].hashing.comparison: unknown key 'postional' "
        "(did you mean 'positional'?)"
    )


def test_schema_file_not_found(tmp_path: Path) -> None:
    path = tmp_path / "missing.json"
    with pytest.raises(SchemaError) as info:
        load_schema(path)
    assert str(info.value) == f"{path}: schema file not found"
