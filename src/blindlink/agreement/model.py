"""The agreement document: strict parsing against its published JSON Schema, canonical bytes,
content hash (the project ID), and the signed envelope both parties sign.

The schema is `agreement.schema.json` beside this module (`blindlink agreement schema` prints
it). A signed agreement is the envelope `{"agreement": {...}, "signatures": {role: sig}}`, each
signature an Ed25519 signature over the agreement's canonical bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

from blindlink.canonical import canonical_json, reject_duplicate_keys
from blindlink.errors import AgreementError
from blindlink.hardening.steps import HardeningError, encodings_id, validate_steps
from blindlink.matching.blocking import Blocking, KeyBlocking, LshBlocking

FORMAT_VERSION = 1
ROLES = ("requester", "custodian")
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class ReleaseKind(StrEnum):
    """What one party receives once a run is done."""

    OWN_ROWS = "own_rows"
    PAIRS = "pairs"
    COUNT = "count"
    NOTHING = "nothing"


@dataclass(frozen=True)
class Party:
    role: str
    name: str
    public_key: str
    certificate_sha256: str


@dataclass(frozen=True)
class Agreement:
    """A parsed, validated agreement. Field names follow the document's sections."""

    document: dict[str, Any]
    parties: dict[str, Party]
    schema_sha256: str
    bit_length: int
    hardening: list[dict[str, Any]]
    threshold: float
    threshold_floor: float
    blocking: Blocking | None
    release: dict[str, ReleaseKind]
    ambiguity_margin: float
    custodian_approval: bool
    max_records_per_upload: int
    period_seconds: int
    max_uploads_per_period: int
    max_records_per_period: int
    valid_from: datetime
    valid_until: datetime
    delete_encodings_after_release: bool
    encodings_ttl_seconds: int
    results_ttl_seconds: int

    @property
    def reference(self) -> str:
        return str(self.document["reference"])

    @property
    def canonical_bytes(self) -> bytes:
        return canonical_json(self.document)

    @property
    def project_id(self) -> str:
        return hashlib.sha256(self.canonical_bytes).hexdigest()

    @property
    def blocking_keys(self) -> KeyBlocking | None:
        """The blocking keys the parties compute while encoding, if the agreement has them."""
        return self.blocking if isinstance(self.blocking, KeyBlocking) else None

    @property
    def record_bit_length(self) -> int:
        """Bits per uploaded record: the encoding, then a 64-bit key per blocking key."""
        keys = self.blocking_keys
        return self.bit_length + (64 * len(keys.keys) if keys else 0)

    @property
    def encodings_id(self) -> str:
        """The origin that uploads made as agreed name in their header."""
        keys = self.blocking_keys
        return encodings_id(self.schema_sha256, self.hardening, keys.document() if keys else None)

    def role_for_certificate(self, fingerprint: str | None) -> str | None:
        """The role whose TLS client certificate has this SHA-256, if any."""
        for party in self.parties.values():
            if fingerprint is not None and party.certificate_sha256 == fingerprint:
                return party.role
        return None


@cache
def agreement_json_schema() -> dict[str, Any]:
    """The published JSON Schema of the agreement document."""
    text = (resources.files("blindlink.agreement") / "agreement.schema.json").read_text("utf-8")
    return dict(json.loads(text))


# JSON Schema counts 1024.0 as an integer; the agreement does not, because a document that
# writes 1024.0 hashes to a different project ID than one that writes 1024.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    ),
)


def load_json(raw: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no duplicate keys."""
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=reject_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise AgreementError(f"{what} is not valid UTF-8 JSON: {exc}") from None


def parse_agreement(raw: bytes) -> Agreement:
    """Parse and validate agreement bytes (the agreement object itself, not the envelope)."""
    return agreement_from_document(load_json(raw, "agreement"))


def agreement_from_document(document: Any) -> Agreement:
    """Validate a document against the JSON Schema and the rules a schema cannot express."""
    validator = _Validator(agreement_json_schema())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "agreement"
        raise AgreementError(f"{where}: {first.message}")
    try:
        validate_steps(document["encoding"]["hardening"])
    except HardeningError as exc:
        raise AgreementError(f"encoding.{exc}") from None
    parties = {role: Party(role, **document["parties"][role]) for role in ROLES}
    matching, release = document["matching"], document["release"]
    limits, retention = document["limits"], document["retention"]
    agreement = Agreement(
        document=document,
        parties=parties,
        schema_sha256=document["encoding"]["schema_sha256"],
        bit_length=document["encoding"]["bit_length"],
        hardening=document["encoding"]["hardening"],
        threshold=float(matching["threshold"]),
        threshold_floor=float(matching["threshold_floor"]),
        blocking=_blocking(matching["blocking"]),
        release={role: ReleaseKind(release[role]) for role in ROLES},
        ambiguity_margin=float(release["ambiguity_margin"]),
        custodian_approval=release["custodian_approval"],
        max_records_per_upload=limits["max_records_per_upload"],
        period_seconds=limits["period_seconds"],
        max_uploads_per_period=limits["max_uploads_per_period"],
        max_records_per_period=limits["max_records_per_period"],
        valid_from=parse_timestamp(limits["valid_from"], "limits.valid_from"),
        valid_until=parse_timestamp(limits["valid_until"], "limits.valid_until"),
        delete_encodings_after_release=retention["delete_encodings_after_release"],
        encodings_ttl_seconds=retention["encodings_ttl_seconds"],
        results_ttl_seconds=retention["results_ttl_seconds"],
    )
    _check_consistency(agreement)
    return agreement


def _blocking(section: dict[str, Any]) -> Blocking | None:
    if section["method"] == "none":
        return None
    if section["method"] == "keys":
        return KeyBlocking.from_document(section["keys"])
    return LshBlocking(section["bands"], section["bits_per_band"], section["seed"])


def _check_consistency(agreement: Agreement) -> None:
    if agreement.threshold_floor > agreement.threshold:
        raise AgreementError("matching.threshold_floor must not exceed matching.threshold")
    if agreement.valid_from >= agreement.valid_until:
        raise AgreementError("limits.valid_from must be before limits.valid_until")
    requester, custodian = agreement.parties["requester"], agreement.parties["custodian"]
    if requester.public_key == custodian.public_key:
        raise AgreementError("parties: the requester and the custodian have the same public key")
    if requester.certificate_sha256 == custodian.certificate_sha256:
        raise AgreementError("parties: the requester and the custodian have the same certificate")


def parse_timestamp(text: str, where: str) -> datetime:
    try:
        return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise AgreementError(
            f"{where}: {text!r} is not a UTC time like 2026-12-01T00:00:00Z"
        ) from None


def format_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


@dataclass(frozen=True)
class PartyInfo:
    """What names a party in a new agreement."""

    name: str
    public_key: str
    certificate_sha256: str


def new_agreement_document(
    *,
    reference: str,
    requester: PartyInfo,
    custodian: PartyInfo,
    schema_sha256: str,
    bit_length: int,
    hardening: list[dict[str, Any]] | None = None,
    threshold: float = 0.8,
    threshold_floor: float | None = None,
    blocking: dict[str, Any] | None = None,
    requester_release: str = "own_rows",
    custodian_release: str = "count",
    ambiguity_margin: float = 0.0,
    custodian_approval: bool = False,
    max_records_per_upload: int = 10_000_000,
    period_seconds: int = 86_400,
    max_uploads_per_period: int = 100,
    max_records_per_period: int = 100_000_000,
    valid_from: datetime | None = None,
    valid_days: int = 365,
    delete_encodings_after_release: bool = True,
    encodings_ttl_seconds: int = 30 * 86_400,
    results_ttl_seconds: int = 30 * 86_400,
) -> dict[str, Any]:
    """A new, validated agreement document. Validity starts now unless `valid_from` is given."""
    start = (valid_from or datetime.now(UTC)).replace(microsecond=0)
    document = {
        "blindlink_agreement": FORMAT_VERSION,
        "reference": reference,
        "parties": {
            "requester": vars(requester).copy(),
            "custodian": vars(custodian).copy(),
        },
        "encoding": {
            "schema_sha256": schema_sha256,
            "bit_length": bit_length,
            "hardening": hardening or [],
        },
        "matching": {
            "threshold": threshold,
            "threshold_floor": threshold if threshold_floor is None else threshold_floor,
            "blocking": blocking or {"method": "none"},
            "solver": "greedy",
        },
        "release": {
            "requester": requester_release,
            "custodian": custodian_release,
            "ambiguity_margin": ambiguity_margin,
            "custodian_approval": custodian_approval,
        },
        "limits": {
            "max_records_per_upload": max_records_per_upload,
            "period_seconds": period_seconds,
            "max_uploads_per_period": max_uploads_per_period,
            "max_records_per_period": max_records_per_period,
            "valid_from": format_timestamp(start),
            "valid_until": format_timestamp(start + timedelta(days=valid_days)),
        },
        "retention": {
            "delete_encodings_after_release": delete_encodings_after_release,
            "encodings_ttl_seconds": encodings_ttl_seconds,
            "results_ttl_seconds": results_ttl_seconds,
        },
    }
    agreement_from_document(document)
    return document
