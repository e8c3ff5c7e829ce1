"""The agreement document, its strict parsing, canonical bytes and content hash (the project ID).

An agreement is a JSON object:

    {
      "blindlink_agreement": 1,
      "reference": "DSA-2026-017",                  # the parties' own reference; makes IDs unique
      "parties": {"requester": {"name": "..."}, "custodian": {"name": "..."}},
      "encoding": {"schema_sha256": "<hex>", "bit_length": 1024},
      "matching": {"threshold": 0.8},
      "release": {"requester": "own_rows", "custodian": "count"},
      "limits": {"max_records_per_upload": 2000000}
    }
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from blindlink.canonical import canonical_json, reject_duplicate_keys
from blindlink.errors import AgreementError

FORMAT_VERSION = 1
ROLES = ("requester", "custodian")
DEFAULT_MAX_RECORDS = 10_000_000


class ReleaseKind(StrEnum):
    """What one party receives once a run is done."""

    OWN_ROWS = "own_rows"
    PAIRS = "pairs"
    COUNT = "count"
    NOTHING = "nothing"


@dataclass(frozen=True)
class Agreement:
    reference: str
    party_names: dict[str, str]
    schema_sha256: str
    bit_length: int
    threshold: float
    release: dict[str, ReleaseKind]
    max_records_per_upload: int
    document: dict[str, Any]

    @property
    def canonical_bytes(self) -> bytes:
        return canonical_json(self.document)

    @property
    def project_id(self) -> str:
        return hashlib.sha256(self.canonical_bytes).hexdigest()

    def other_role(self, role: str) -> str:
        return ROLES[1 - ROLES.index(role)]


_TOP_KEYS = {
    "blindlink_agreement",
    "reference",
    "parties",
    "encoding",
    "matching",
    "release",
    "limits",
}


def parse_agreement(raw: bytes) -> Agreement:
    """Parse and validate agreement bytes; unknown keys and inconsistent settings are errors."""
    try:
        document = json.loads(raw.decode("utf-8"), object_pairs_hook=reject_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise AgreementError(f"agreement is not UTF-8 JSON: {exc}") from None
    section = _object(document, "agreement", _TOP_KEYS)
    version = section.get("blindlink_agreement")
    if type(version) is not int or version != FORMAT_VERSION:
        raise AgreementError(f"agreement.blindlink_agreement must be {FORMAT_VERSION}")
    reference = section.get("reference")
    if not isinstance(reference, str) or not reference.strip() or len(reference) > 200:
        raise AgreementError(
            "agreement.reference must be a non-empty string (at most 200 characters)"
        )
    parties = _object(section.get("parties"), "parties", set(ROLES), required=set(ROLES))
    names = {role: _party_name(parties[role], role) for role in ROLES}
    encoding = _object(
        section.get("encoding"),
        "encoding",
        {"schema_sha256", "bit_length"},
        required={"schema_sha256", "bit_length"},
    )
    matching = _object(section.get("matching"), "matching", {"threshold"}, required={"threshold"})
    release = _object(section.get("release"), "release", set(ROLES), required=set(ROLES))
    limits = _object(section.get("limits", {}), "limits", {"max_records_per_upload"})
    return Agreement(
        reference=reference,
        party_names=names,
        schema_sha256=_schema_hash(encoding["schema_sha256"]),
        bit_length=_bit_length(encoding["bit_length"]),
        threshold=_threshold(matching["threshold"]),
        release={role: _release_kind(release[role], role) for role in ROLES},
        max_records_per_upload=_positive_int(
            limits.get("max_records_per_upload", DEFAULT_MAX_RECORDS),
            "limits.max_records_per_upload",
        ),
        document=document,
    )


def _object(
    value: Any, where: str, allowed: set[str], required: set[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AgreementError(f"{where} must be a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise AgreementError(
            f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})"
        )
    missing = sorted(required - set(value))
    if missing:
        raise AgreementError(f"{where}: missing key '{missing[0]}'")
    return value


def _party_name(value: Any, role: str) -> str:
    party = _object(value, f"parties.{role}", {"name"}, required={"name"})
    name = party["name"]
    if not isinstance(name, str) or not name.strip():
        raise AgreementError(f"parties.{role}.name must be a non-empty string")
    return name


def _schema_hash(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise AgreementError(
            "encoding.schema_sha256 must be 64 lowercase hex digits (see `blindlink schema hash`)"
        )
    return value


def _bit_length(value: Any) -> int:
    bits = _positive_int(value, "encoding.bit_length")
    if bits % 8 or bits > 1 << 16:
        raise AgreementError("encoding.bit_length must be a multiple of 8, at most 65536")
    return bits


def _threshold(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise AgreementError("matching.threshold must be a number in (0, 1]")
    return float(value)


def _release_kind(value: Any, role: str) -> ReleaseKind:
    try:
        return ReleaseKind(value)
    except ValueError:
        options = ", ".join(k.value for k in ReleaseKind)
        raise AgreementError(f"release.{role} must be one of {options}") from None


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AgreementError(f"{where} must be a positive integer")
    return value


def new_agreement_document(
    reference: str,
    requester: str,
    custodian: str,
    schema_sha256: str,
    bit_length: int,
    threshold: float,
    requester_release: str = "own_rows",
    custodian_release: str = "count",
    max_records_per_upload: int = DEFAULT_MAX_RECORDS,
) -> dict[str, Any]:
    """A new agreement document, validated."""
    document = {
        "blindlink_agreement": FORMAT_VERSION,
        "reference": reference,
        "parties": {"requester": {"name": requester}, "custodian": {"name": custodian}},
        "encoding": {"schema_sha256": schema_sha256, "bit_length": bit_length},
        "matching": {"threshold": threshold},
        "release": {"requester": requester_release, "custodian": custodian_release},
        "limits": {"max_records_per_upload": max_records_per_upload},
    }
    parse_agreement(canonical_json(document))
    return document
