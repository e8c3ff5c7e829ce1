"""Linkage schemas: strict loading of version 3 linkage schemas and their content hash.

The format is clkhash's version 3 linkage schema, so schemas written for clkhash work unchanged
and give the same encodings; blindlink reads it itself (see `_parse` for what it refuses).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from blindlink.canonical import canonical_json, reject_duplicate_keys
from blindlink.encoding.fields import (
    BitsPerFeature,
    BitsPerToken,
    Comparison,
    DateFormat,
    EnumFormat,
    ExactComparison,
    Field,
    Format,
    Hashing,
    IntegerFormat,
    InvalidValue,
    NgramComparison,
    NumericComparison,
    Strategy,
    StringFormat,
)
from blindlink.errors import SchemaError

# Keys of each object in a clkhash v3 schema. clkhash's master schema lets unknown keys through
# at most levels, so a misspelt key (say "postional") would be silently ignored and both parties
# could believe they agreed on settings they did not get.
_KEYS = {
    "schema": {"version", "clkConfig", "features"},
    "clkConfig": {"l", "kdf"},
    "kdf": {"type", "hash", "salt", "info", "keySize"},
    "feature": {"identifier", "description", "ignored", "format", "hashing"},
    "format": {
        "type",
        "encoding",
        "case",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "values",
        "minimum",
        "maximum",
        "description",
    },
    "hashing": {"hash", "strategy", "comparison", "missingValue"},
    "hash": {"type", "prevent_singularity"},
    "strategy": {"bitsPerToken", "bitsPerFeature"},
    "comparison": {
        "type",
        "n",
        "positional",
        "thresholdDistance",
        "resolution",
        "fractional_precision",
    },
    "missingValue": {"sentinel", "replaceWith"},
}


@dataclass(frozen=True)
class KeyDerivation:
    """HKDF settings for the per-field hashing keys (clkConfig.kdf)."""

    hash: str
    salt: bytes | None
    info: bytes | None
    key_size: int


@dataclass(frozen=True)
class LinkageSchema:
    """A validated linkage schema with its canonical content hash."""

    fields: tuple[Field, ...]
    bit_length: int
    kdf: KeyDerivation
    document: dict[str, Any]
    sha256: str

    @property
    def columns(self) -> list[str]:
        return [f.identifier for f in self.fields]


def default_schema_path() -> Path:
    """The schema for files made by `blindlink generate`, shipped with the package."""
    return Path(str(resources.files("blindlink.encoding") / "schemas" / "default.json"))


def load_schema(path: Path) -> LinkageSchema:
    """Load and strictly validate a version 3 linkage schema file."""
    try:
        document = json.loads(
            Path(path).read_text(encoding="utf-8"), object_pairs_hook=reject_duplicate_keys
        )
    except FileNotFoundError:
        raise SchemaError(f"{path}: schema file not found") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise SchemaError(f"{path}: not a valid UTF-8 JSON file ({exc})") from None
    return parse_schema(document, source=str(path))


def parse_schema(document: Any, source: str = "schema") -> LinkageSchema:
    """Validate a schema document: strict keys, then every setting's type and range."""
    if not isinstance(document, dict):
        raise SchemaError(f"{source}: the schema must be a JSON object")
    if document.get("version") != 3:
        raise SchemaError(
            f"{source}: only clkhash schema version 3 is supported "
            f"(found version {document.get('version')!r})"
        )
    _check_keys(document, source)
    try:
        fields, bit_length, kdf = _parse(document)
    except _Invalid as exc:
        raise SchemaError(f"{source}: {exc}") from None
    digest = hashlib.sha256(canonical_json(document)).hexdigest()
    return LinkageSchema(fields, bit_length, kdf, document, digest)


def _check_keys(document: dict[str, Any], source: str) -> None:
    _check_object(document, "schema", "", source)
    config = document.get("clkConfig")
    if isinstance(config, dict):
        if "xorFolds" in config:
            raise SchemaError(
                f"{source}: clkConfig.xorFolds is not supported: clkhash 0.18 ignores it, so the "
                "encodings would not be folded as the schema says"
            )
        _check_object(config, "clkConfig", "clkConfig", source)
        if isinstance(config.get("kdf"), dict):
            _check_object(config["kdf"], "kdf", "clkConfig.kdf", source)
    for i, feature in enumerate(document.get("features") or []):
        if not isinstance(feature, dict):
            continue
        where = f"features[{i}]"
        _check_object(feature, "feature", where, source)
        if isinstance(feature.get("format"), dict):
            _check_object(feature["format"], "format", f"{where}.format", source)
        hashing = feature.get("hashing")
        if isinstance(hashing, dict):
            _check_object(hashing, "hashing", f"{where}.hashing", source)
            for part in ("hash", "strategy", "comparison", "missingValue"):
                if isinstance(hashing.get(part), dict):
                    _check_object(hashing[part], part, f"{where}.hashing.{part}", source)


def _check_object(obj: dict[str, Any], kind: str, where: str, source: str) -> None:
    allowed = _KEYS[kind]
    for key in obj:
        if key not in allowed:
            guess = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean '{guess[0]}'?)" if guess else ""
            location = f"{where}: " if where else ""
            raise SchemaError(f"{source}: {location}unknown key '{key}'{hint}")


# --- settings: types, ranges and combinations ----------------------------------------------------
#
# The accepted documents are those clkhash's version 3 master schema accepts, less what blindlink
# refuses: a key that belongs to another comparison or hash type, XOR folding, bit lengths that are
# not whole bytes, and combinations clkhash only fails on when it encodes (BLAKE2b with a bit
# length that is not a power of two or keys over 64 bytes, more key material than HKDF gives).

_HKDF_HASHES = {"SHA256": 32, "SHA512": 64}
_ENCODINGS = ("ascii", "utf-8", "utf-16", "utf-32")
_CASES = ("upper", "lower", "mixed")
_BLAKE_MAX_KEY = 64
_FORMAT_KEYS = {
    "string": {"type", "encoding", "case", "minLength", "maxLength", "pattern", "description"},
    "integer": {"type", "minimum", "maximum", "description"},
    "date": {"type", "format", "description"},
    "enum": {"type", "values", "description"},
}
_COMPARISON_KEYS = {
    "ngram": {"type", "n", "positional"},
    "exact": {"type"},
    "numeric": {"type", "thresholdDistance", "resolution", "fractional_precision"},
}
_HASH_KEYS = {"blakeHash": {"type"}, "doubleHash": {"type", "prevent_singularity"}}


class _Invalid(Exception):
    """A setting is missing, of the wrong type or out of range; the message names where."""


def _parse(document: dict[str, Any]) -> tuple[tuple[Field, ...], int, KeyDerivation]:
    config = _object(document, "clkConfig", "")
    bit_length = _integer(config, "l", "clkConfig", minimum=1, required=True)
    if bit_length % 8:
        raise _Invalid(f"clkConfig.l must be a multiple of 8 (found {bit_length})")
    kdf = _key_derivation(_object(config, "kdf", "clkConfig"))
    _present(document, "features", "", required=True)
    features = document["features"]
    if not isinstance(features, list):
        raise _Invalid("features: must be a list of fields")
    fields = tuple(_field(feature, f"features[{i}]") for i, feature in enumerate(features))
    keys_bytes = 2 * len(fields) * kdf.key_size
    if keys_bytes > 255 * _HKDF_HASHES[kdf.hash]:
        raise _Invalid(
            f"clkConfig.kdf: {len(fields)} fields of two {kdf.key_size}-byte keys need "
            f"{keys_bytes} bytes, more than HKDF-{kdf.hash} derives "
            f"({255 * _HKDF_HASHES[kdf.hash]}); use a smaller keySize"
        )
    for i, field in enumerate(fields):
        if field.hashing is not None and field.hashing.hash == "blakeHash":
            where = f"features[{i}] ({field.identifier}).hashing.hash"
            if bit_length & (bit_length - 1):
                raise _Invalid(
                    f"{where}: blakeHash needs clkConfig.l to be a power of two "
                    f"(found {bit_length}); use doubleHash or another length"
                )
            if kdf.key_size > _BLAKE_MAX_KEY:
                raise _Invalid(
                    f"{where}: blakeHash takes keys of at most {_BLAKE_MAX_KEY} bytes "
                    f"(clkConfig.kdf.keySize is {kdf.key_size})"
                )
    return fields, bit_length, kdf


def _key_derivation(kdf: dict[str, Any]) -> KeyDerivation:
    where = "clkConfig.kdf"
    _choice(kdf, "type", where, ("HKDF",), required=True)
    return KeyDerivation(
        hash=_choice(kdf, "hash", where, tuple(_HKDF_HASHES)) or "SHA256",
        salt=_base64(kdf, "salt", where),
        info=_base64(kdf, "info", where),
        key_size=_integer(kdf, "keySize", where, minimum=1) or 64,
    )


def _field(feature: Any, where: str) -> Field:
    if not isinstance(feature, dict):
        raise _Invalid(f"{where}: a field must be a JSON object")
    identifier = _string(feature, "identifier", where, required=True)
    where = f"{where} ({identifier})"
    _string(feature, "description", where)
    ignored = _boolean(feature, "ignored", where)
    if ignored and "format" not in feature and "hashing" not in feature:
        return Field(identifier)
    format_document = _object(feature, "format", where)
    fmt = _format(format_document, f"{where}.format")
    encoding = format_document.get("encoding", "utf-8")  # checked by _format; strings only
    hashing = _hashing(_object(feature, "hashing", where), f"{where}.hashing", encoding)
    if ignored:
        return Field(identifier)
    replacement = hashing.replace_with if hashing.replace_with is not None else hashing.sentinel
    if isinstance(hashing.comparison, NumericComparison) and replacement:
        try:
            hashing.comparison.tokenize(replacement)
        except InvalidValue:
            raise _Invalid(
                f"{where}.hashing.missingValue: a numeric comparison hashes numbers, and a "
                f"missing value would be hashed as {replacement!r}; set 'replaceWith' to a "
                "number or ''"
            ) from None
    return Field(identifier, fmt, hashing)


def _format(fmt: dict[str, Any], where: str) -> Format:
    kind = _choice(fmt, "type", where, tuple(_FORMAT_KEYS), required=True)
    _only(fmt, _FORMAT_KEYS[kind], where, f"{kind} formats")
    _string(fmt, "description", where)
    if kind == "integer":
        return IntegerFormat(_integer(fmt, "minimum", where), _integer(fmt, "maximum", where))
    if kind == "date":
        return DateFormat(_string(fmt, "format", where, required=True))
    if kind == "enum":
        values = fmt.get("values")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise _Invalid(f"{where}.values: must be a list of strings")
        return EnumFormat(tuple(values))
    _choice(fmt, "encoding", where, _ENCODINGS)
    if "pattern" not in fmt:
        return StringFormat(
            case=_choice(fmt, "case", where, _CASES) or "mixed",
            min_length=_integer(fmt, "minLength", where, minimum=0),
            max_length=_integer(fmt, "maxLength", where, minimum=1),
        )
    for key in ("case", "minLength", "maxLength"):
        if key in fmt:
            raise _Invalid(f"{where}: '{key}' cannot be combined with 'pattern'")
    pattern = _string(fmt, "pattern", where, required=True)
    try:
        return StringFormat(pattern=re.compile(pattern))
    except re.error as exc:
        raise _Invalid(f"{where}.pattern: not a valid regular expression ({exc})") from None


def _hashing(hashing: dict[str, Any], where: str, encoding: str) -> Hashing:
    hash_type, prevent_singularity = _hash(hashing.get("hash", {"type": "blakeHash"}), where)
    missing = hashing.get("missingValue")
    sentinel = replace_with = None
    if missing is not None:
        missing = _object(hashing, "missingValue", where)
        sentinel = _string(missing, "sentinel", f"{where}.missingValue", required=True)
        replace_with = _string(missing, "replaceWith", f"{where}.missingValue")
    return Hashing(
        comparison=_comparison(_object(hashing, "comparison", where), f"{where}.comparison"),
        strategy=_strategy(_object(hashing, "strategy", where), f"{where}.strategy"),
        hash=hash_type,
        prevent_singularity=prevent_singularity,
        encoding=encoding,
        sentinel=sentinel,
        replace_with=replace_with,
    )


def _hash(spec: Any, where: str) -> tuple[Literal["blakeHash", "doubleHash"], bool]:
    where = f"{where}.hash"
    if not isinstance(spec, dict):
        raise _Invalid(f"{where}: must be a JSON object")
    kind = _choice(spec, "type", where, tuple(_HASH_KEYS), required=True)
    _only(spec, _HASH_KEYS[kind], where, kind)
    return kind, bool(_boolean(spec, "prevent_singularity", where))


def _comparison(spec: dict[str, Any], where: str) -> Comparison:
    kind = _choice(spec, "type", where, tuple(_COMPARISON_KEYS), required=True)
    _only(spec, _COMPARISON_KEYS[kind], where, f"{kind} comparisons")
    if kind == "ngram":
        n = _integer(spec, "n", where, minimum=1, required=True)
        return NgramComparison(n, bool(_boolean(spec, "positional", where)))
    if kind == "exact":
        return ExactComparison()
    distance = spec.get("thresholdDistance")
    if isinstance(distance, bool) or not isinstance(distance, int | float):
        raise _Invalid(f"{where}.thresholdDistance: must be a number (found {distance!r})")
    if not 0 < distance < float("inf"):
        raise _Invalid(
            f"{where}.thresholdDistance: must be a finite number greater than 0 (found {distance})"
        )
    comparison = NumericComparison(
        distance,
        _integer(spec, "resolution", where, minimum=1, required=True),
        _integer(spec, "fractional_precision", where, minimum=0) or 0,
    )
    if comparison.interval == 0:
        raise _Invalid(
            f"{where}.thresholdDistance: {distance} is 0 at fractional_precision "
            f"{comparison.fractional_precision}; raise the precision"
        )
    return comparison


def _strategy(spec: dict[str, Any], where: str) -> Strategy:
    if len(spec) != 1:
        raise _Invalid(f"{where}: give exactly one of 'bitsPerToken' and 'bitsPerFeature'")
    if "bitsPerToken" in spec:
        return BitsPerToken(_integer(spec, "bitsPerToken", where, minimum=1, required=True))
    return BitsPerFeature(_integer(spec, "bitsPerFeature", where, minimum=1, required=True))


# --- typed reads: each names the key's path when the value is missing or wrong ------------------


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _present(obj: dict[str, Any], key: str, where: str, required: bool) -> bool:
    if key in obj:
        return True
    if required:
        raise _Invalid(f"{_path(where, key)}: required")
    return False


def _object(obj: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    _present(obj, key, where, required=True)
    value = obj[key]
    if not isinstance(value, dict):
        raise _Invalid(f"{_path(where, key)}: must be a JSON object")
    return value


def _integer(
    obj: dict[str, Any], key: str, where: str, minimum: int | None = None, required: bool = False
) -> Any:
    if not _present(obj, key, where, required):
        return None
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"{_path(where, key)}: must be an integer (found {value!r})")
    if minimum is not None and value < minimum:
        raise _Invalid(f"{_path(where, key)}: {value} is less than the minimum of {minimum}")
    return value


def _string(obj: dict[str, Any], key: str, where: str, required: bool = False) -> Any:
    if not _present(obj, key, where, required):
        return None
    if not isinstance(obj[key], str):
        raise _Invalid(f"{_path(where, key)}: must be a string (found {obj[key]!r})")
    return obj[key]


def _boolean(obj: dict[str, Any], key: str, where: str) -> bool | None:
    if key not in obj:
        return None
    value = obj[key]
    if not isinstance(value, bool):
        raise _Invalid(f"{_path(where, key)}: must be true or false (found {value!r})")
    return value


def _choice(
    obj: dict[str, Any], key: str, where: str, choices: tuple[str, ...], required: bool = False
) -> Any:
    if not _present(obj, key, where, required):
        return None
    if obj[key] not in choices:
        allowed = ", ".join(f"'{c}'" for c in choices)
        raise _Invalid(f"{_path(where, key)}: must be one of {allowed} (found {obj[key]!r})")
    return obj[key]


def _base64(obj: dict[str, Any], key: str, where: str) -> bytes | None:
    text = _string(obj, key, where)
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise _Invalid(f"{_path(where, key)}: not valid base64") from None


def _only(obj: dict[str, Any], allowed: set[str], where: str, what: str) -> None:
    for key in obj:
        if key not in allowed:
            raise _Invalid(f"{where}: '{key}' does not apply to {what}")
