"""Linkage schemas: strict loading of clkhash v3 schemas and their content hash."""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from clkhash import schema as clkhash_schema

from blindlink.canonical import canonical_json, reject_duplicate_keys
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
class LinkageSchema:
    """A validated clkhash linkage schema with its canonical content hash."""

    clkhash: clkhash_schema.Schema
    document: dict[str, Any]
    sha256: str

    @property
    def bit_length(self) -> int:
        return int(self.clkhash.l)

    @property
    def columns(self) -> list[str]:
        return [f.identifier for f in self.clkhash.fields]


def default_schema_path() -> Path:
    """The schema for files made by `blindlink generate`, shipped with the package."""
    return Path(str(resources.files("blindlink.encoding") / "schemas" / "default.json"))


def load_schema(path: Path) -> LinkageSchema:
    """Load and strictly validate a clkhash v3 linkage schema file."""
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
    """Validate a schema document: strict keys, then clkhash's own validation."""
    if not isinstance(document, dict):
        raise SchemaError(f"{source}: the schema must be a JSON object")
    if document.get("version") != 3:
        raise SchemaError(
            f"{source}: only clkhash schema version 3 is supported "
            f"(found version {document.get('version')!r})"
        )
    _check_keys(document, source)
    try:
        parsed = clkhash_schema.from_json_dict(document)
    except clkhash_schema.SchemaError as exc:
        raise SchemaError(f"{source}: {_first_line(exc)}") from None
    if parsed.l % 8:
        raise SchemaError(f"{source}: clkConfig.l must be a multiple of 8 (found {parsed.l})")
    return LinkageSchema(parsed, document, hashlib.sha256(canonical_json(document)).hexdigest())


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    errors = getattr(exc, "field_errors", None)
    if errors:
        text += "; " + "; ".join(str(e) for e in errors)
    return " ".join(text.split())[:500]


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
