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


# --- settings blindlink reads itself: types, ranges, combinations --------------------------------


def _hashing(name: str, **changes: Any) -> Mutation:
    def mutation(document: Document) -> None:
        feature(document, name)["hashing"].update(changes)

    return mutation


def _format(name: str, **changes: Any) -> Mutation:
    def mutation(document: Document) -> None:
        feature(document, name)["format"].update(changes)

    return mutation


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (
            _set(["clkConfig", "l"], 1000),
            "features[1] (given_name).hashing.hash: blakeHash needs clkConfig.l to be a power "
            "of two (found 1000)",
        ),
        (
            _hashing("surname", hash={"type": "blakeHash", "prevent_singularity": True}),
            "features[2] (surname).hashing.hash: 'prevent_singularity' does not apply to blakeHash",
        ),
        (
            _hashing("surname", comparison={"type": "ngram", "n": 2, "resolution": 3}),
            "features[2] (surname).hashing.comparison: 'resolution' does not apply to ngram "
            "comparisons",
        ),
        (
            _hashing("surname", comparison={"type": "ngram"}),
            "features[2] (surname).hashing.comparison.n: required",
        ),
        (
            _hashing("surname", comparison={"type": "ngram", "n": 0}),
            "features[2] (surname).hashing.comparison.n: 0 is less than the minimum of 1",
        ),
        (
            _hashing("surname", comparison={"type": "soundex"}),
            "features[2] (surname).hashing.comparison.type: must be one of 'ngram', 'exact', "
            "'numeric' (found 'soundex')",
        ),
        (
            _hashing("surname", strategy={"bitsPerToken": 5, "bitsPerFeature": 50}),
            "features[2] (surname).hashing.strategy: give exactly one of 'bitsPerToken' and "
            "'bitsPerFeature'",
        ),
        (
            _hashing("surname", strategy={"bitsPerToken": True}),
            "features[2] (surname).hashing.strategy.bitsPerToken: must be an integer (found True)",
        ),
        (
            _format("postcode", case="upper"),
            "features[7] (postcode).format: 'case' cannot be combined with 'pattern'",
        ),
        (
            _format("postcode", pattern="[0-9"),
            "features[7] (postcode).format.pattern: not a valid regular expression",
        ),
        (
            _format("date_of_birth", format=None),
            "features[3] (date_of_birth).format.format: must be a string (found None)",
        ),
        (
            _format("sex", pattern="M|F"),
            "features[4] (sex).format: 'pattern' does not apply to enum formats",
        ),
        (
            _format("city", encoding="latin-1"),
            "features[6] (city).format.encoding: must be one of 'ascii', 'utf-8', 'utf-16', "
            "'utf-32' (found 'latin-1')",
        ),
        (
            _set(["clkConfig", "kdf", "salt"], "not base64!"),
            "clkConfig.kdf.salt: not valid base64",
        ),
        (
            _set(["clkConfig", "kdf", "type"], "PBKDF2"),
            "clkConfig.kdf.type: must be one of 'HKDF' (found 'PBKDF2')",
        ),
        (
            _set(["clkConfig", "kdf", "keySize"], 128),
            "features[1] (given_name).hashing.hash: blakeHash takes keys of at most 64 bytes",
        ),
        (
            _set(["clkConfig", "kdf", "keySize"], 600),
            "clkConfig.kdf: 8 fields of two 600-byte keys need 9600 bytes, more than "
            "HKDF-SHA256 derives (8160)",
        ),
        (
            lambda d: d.pop("features"),
            "s.json: features: required",
        ),
        (
            lambda d: d["features"].append({"identifier": "extra", "ignored": False}),
            "features[8] (extra).format: required",
        ),
    ],
)
def test_setting_of_the_wrong_type_range_or_combination_is_named(
    mutation: Mutation, expected: str
) -> None:
    assert expected in schema_error(mutated(mutation))


def test_numeric_comparison_refuses_a_missing_value_it_cannot_hash() -> None:
    def numeric_age(document: Document) -> None:
        document["features"].append(
            {
                "identifier": "age",
                "format": {"type": "integer"},
                "hashing": {
                    "comparison": {"type": "numeric", "thresholdDistance": 2, "resolution": 2},
                    "strategy": {"bitsPerToken": 5},
                    "missingValue": {"sentinel": "unknown"},
                },
            }
        )

    message = schema_error(mutated(numeric_age))
    assert "features[8] (age).hashing.missingValue: a numeric comparison hashes numbers" in message
    assert "'unknown'" in message


def test_ignored_field_needs_no_format() -> None:
    schema = parse_schema(default_document())
    assert schema.fields[0].hashing is None
    assert schema.fields[0].format_value("R1") == "R1"


def test_numeric_comparison_refuses_a_replacement_it_cannot_hash() -> None:
    def numeric_age(document: Document) -> None:
        document["features"].append(
            {
                "identifier": "age",
                "format": {"type": "integer"},
                "hashing": {
                    "comparison": {"type": "numeric", "thresholdDistance": 2, "resolution": 2},
                    "strategy": {"bitsPerToken": 5},
                    "missingValue": {"sentinel": "", "replaceWith": "?"},
                },
            }
        )

    assert "would be hashed as '?'" in schema_error(mutated(numeric_age))
