"""A parsed agreement (`Agreement`: the settings the server and the parties act on, its
canonical bytes and project ID) and the builder of new agreement documents.

The document itself (its fields, defaults, validation, JSON Schema and canonical bytes) is the
model in agreement/document.py; `blindlink agreement schema` prints its JSON Schema. A signed
agreement is the envelope `{"agreement": {...}, "signatures": {role: sig}, "certificates":
{role: PEM}}` (agreement/signing.py): each party signs with the key of the client certificate
the agreement names for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from blindlink.agreement.document import (
    AgreementDocument,
    BatchPurpose,
    CalibratedDecision,
    KeyBlockingSection,
    LshBlockingSection,
    NoBlockingSection,
    ReleaseKind,
    canonical_bytes,
    format_timestamp,
    load_json,
    new_document,
    now_timestamp,
    parse_timestamp,
    read_document,
    recommended_thresholds,
)
from blindlink.errors import AgreementError
from blindlink.hardening.steps import encodings_id
from blindlink.matching.blocking import Blocking, KeyBlocking, LshBlocking
from blindlink.matching.rules import CalibratedThreshold, DecisionRule, FixedThreshold, Target


@dataclass(frozen=True)
class Party:
    role: str
    name: str
    certificate_sha256: str
    # Agreements written before parties signed with their certificate's key named a separate
    # Ed25519 key here. They still parse (their projects keep working) but create no projects.
    public_key: str | None = None


@dataclass(frozen=True)
class Agreement:
    """A parsed, validated agreement. Field names follow the document's sections."""

    document: dict[str, Any]  # as signed (agreement/document.py: ReadDocument.document)
    parties: dict[str, Party]
    schema_sha256: str
    bit_length: int
    hardening: list[dict[str, Any]]
    decision: DecisionRule
    # The lowest threshold a requester batch may ask for; None when runs calibrate theirs.
    threshold_floor: float | None
    blocking: Blocking | None
    release: dict[str, ReleaseKind]
    possible_release: str  # "count" or "list"
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
    # What each requester batch must declare as its purpose; None: batches declare none.
    batch_purpose: BatchPurpose | None = None
    # Where the document states the decision rule: "matching.decision", or "matching" in
    # agreements written before it. Refusals under the rule name keys below this.
    decision_key: str = "matching.decision"

    @property
    def format_version(self) -> int:
        return int(self.document["blindlink_agreement"])

    @property
    def reference(self) -> str:
        return str(self.document["reference"])

    @property
    def ambiguity_margin(self) -> float:
        return self.decision.ambiguity_margin

    def rule_for_run(self, threshold: float) -> DecisionRule:
        """The decision rule of a run whose threshold `run_threshold` gave: a fixed rule at that
        threshold; a calibrated rule as agreed (its runs choose their own, so `threshold` is 0)."""
        if isinstance(self.decision.threshold, FixedThreshold):
            return replace(self.decision, threshold=FixedThreshold(threshold))
        return self.decision

    @property
    def canonical_bytes(self) -> bytes:
        """What the parties sign and the project ID hashes: RFC 8785 (format 2)."""
        return canonical_bytes(self.document)

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


def parse_agreement(raw: bytes) -> Agreement:
    """Parse and validate agreement bytes (the agreement object itself, not the envelope)."""
    return agreement_from_document(load_json(raw, "agreement"))


def agreement_from_document(document: Any) -> Agreement:
    """Validate a document (format 2, or 1 as written before) against the agreement model."""
    read = read_document(document)
    model, keys = read.model, dict(read.legacy_keys)
    sections = {"requester": model.parties.requester, "custodian": model.parties.custodian}
    parties = {
        role: Party(role, section.name, section.certificate_sha256, keys.get(role))
        for role, section in sections.items()
    }
    release, limits, retention = model.release, model.limits, model.retention
    decision, threshold_floor = _decision(model)
    return Agreement(
        document=read.document,
        parties=parties,
        schema_sha256=model.encoding.schema_sha256,
        bit_length=model.encoding.bit_length,
        hardening=[dict(step) for step in model.encoding.hardening],
        decision=decision,
        threshold_floor=threshold_floor,
        blocking=_blocking(model.matching.blocking),
        release={"requester": release.requester, "custodian": release.custodian},
        possible_release=release.possible_matches,
        custodian_approval=release.custodian_approval,
        max_records_per_upload=limits.max_records_per_upload,
        period_seconds=limits.period_seconds,
        max_uploads_per_period=limits.max_uploads_per_period,
        max_records_per_period=limits.max_records_per_period,
        valid_from=parse_timestamp(limits.valid_from, "limits.valid_from"),
        valid_until=parse_timestamp(limits.valid_until, "limits.valid_until"),
        delete_encodings_after_release=retention.delete_encodings_after_release,
        encodings_ttl_seconds=retention.encodings_ttl_seconds,
        results_ttl_seconds=retention.results_ttl_seconds,
        batch_purpose=model.batch_purpose,
        decision_key="matching" if read.legacy_decision else "matching.decision",
    )


def _decision(model: AgreementDocument) -> tuple[DecisionRule, float | None]:
    """The decision rule and, for a fixed threshold, its floor."""
    section = model.matching.decision
    threshold: FixedThreshold | CalibratedThreshold
    floor: float | None = None
    if isinstance(section, CalibratedDecision):
        low, high = section.bounds
        threshold = CalibratedThreshold(
            section.target, (low, high), section.fallback_threshold, section.min_precision or 0.0
        )
    else:
        threshold = FixedThreshold(section.threshold)
        floor = section.threshold_floor
    band = model.matching.possible_matches
    return DecisionRule(
        threshold,
        None if band is None else (band[0], band[1]),
        model.release.ambiguity_margin,
        bool(model.matching.custodian_duplicates),
    ), floor


def default_rule(
    hardening: list[dict[str, Any]], custodian_duplicates: bool = False
) -> DecisionRule:
    """The rule a new agreement decides by unless it states one, for encodings made with these
    hardening steps: calibrated towards the best estimated F*, within the bounds and with the
    fallback threshold recommended for them (recommended_thresholds), no possible-match band, no
    ambiguity margin."""
    recommended = recommended_thresholds(hardening)
    return DecisionRule(
        CalibratedThreshold(Target.BEST_F_STAR, recommended.bounds, recommended.fallback),
        custodian_duplicates=custodian_duplicates,
    )


def _blocking(
    section: NoBlockingSection | LshBlockingSection | KeyBlockingSection,
) -> Blocking | None:
    if isinstance(section, LshBlockingSection):
        return LshBlocking(section.bands, section.bits_per_band, section.seed)
    if isinstance(section, KeyBlockingSection):
        return KeyBlocking.from_document(
            [[part.model_dump(exclude_none=True) for part in key] for key in section.keys]
        )
    return None


# A fixed or fallback threshold this far outside the measured range is unusual.
UNUSUAL_DISTANCE = 0.1


def unusual_thresholds(agreement: Agreement) -> str | None:
    """Why the agreement's thresholds are unusual for its hardening, or None when they are not:
    a fixed or fallback threshold more than UNUSUAL_DISTANCE outside the measured range, or
    calibration bounds that do not overlap it."""
    expected = recommended_thresholds(agreement.hardening)
    low, high = expected.measured
    where = (
        f"the range {low:g}-{high:g} of calibrated thresholds the tradeoff benchmark measured "
        f"with {expected.hardening} (this agreement's hardening: "
        f"{_describe_hardening(agreement.hardening)})"
    )
    chosen = agreement.decision.threshold
    if isinstance(chosen, FixedThreshold):
        name, value = "threshold", chosen.threshold
    else:
        bottom, top = chosen.bounds
        if top < low or bottom > high:
            return f"the threshold bounds [{bottom:g}, {top:g}] do not overlap {where}"
        name, value = "fallback threshold", chosen.fallback_threshold
    if round(expected.distance(value), 6) > UNUSUAL_DISTANCE:
        return f"the {name} {value:g} lies more than {UNUSUAL_DISTANCE:g} outside {where}"
    return None


def refuse_unusual_thresholds(agreement: Agreement, override: str) -> None:
    """No silent bad settings: thresholds far from those measured for the hardening lose recall
    or precision, so they need an explicit `override` (how the caller says so)."""
    problem = unusual_thresholds(agreement)
    if problem:
        raise AgreementError(
            f"{problem}, so runs would lose recall or precision. Leave out the threshold "
            f"settings to let each run calibrate its threshold within the recommended bounds, "
            f"or {override} to agree on these settings anyway"
        )


def _describe_hardening(steps: list[dict[str, Any]]) -> str:
    """Steps as words, e.g. "diffusion t=3"."""
    words = [
        " ".join([step["kind"], *(f"{k}={v}" for k, v in step.items() if k != "kind")])
        for step in steps
    ]
    return ", ".join(words) or "none"


@dataclass(frozen=True)
class PartyInfo:
    """What names a party in a new agreement: its name and its client certificate, whose key
    signs the agreement."""

    name: str
    certificate_sha256: str


def new_agreement_document(
    *,
    reference: str,
    requester: PartyInfo,
    custodian: PartyInfo,
    schema_sha256: str,
    bit_length: int,
    hardening: list[dict[str, Any]] | None = None,
    threshold: float | None = None,
    threshold_floor: float | None = None,
    target: str | None = None,
    min_precision: float | None = None,
    threshold_bounds: tuple[float, float] | None = None,
    fallback_threshold: float | None = None,
    possible_matches: tuple[float, float] | None = None,
    possible_release: str | None = None,
    blocking: dict[str, Any] | None = None,
    custodian_duplicates: bool | None = None,
    requester_release: str | None = None,
    custodian_release: str | None = None,
    ambiguity_margin: float | None = None,
    custodian_approval: bool | None = None,
    max_records_per_upload: int | None = None,
    period_seconds: int | None = None,
    max_uploads_per_period: int | None = None,
    max_records_per_period: int | None = None,
    valid_from: datetime | None = None,
    valid_days: int | None = None,
    delete_encodings_after_release: bool | None = None,
    encodings_ttl_seconds: int | None = None,
    results_ttl_seconds: int | None = None,
    require_purpose: bool | None = None,
    purpose_max_length: int | None = None,
    allowed_purposes: Sequence[str] | None = None,
    allow_unusual_threshold: bool = False,
) -> dict[str, Any]:
    """A new, validated agreement document (format 2). A setting left None takes the agreement
    model's default (agreement/document.py), as `blindlink agreement new` does for an option
    left out: the recommended hardening, validity from now for a year, the release, limits and
    retention the model states.

    With `threshold`, runs decide at that fixed threshold (batches may ask for another, not
    below `threshold_floor`, which defaults to the threshold). Without it, each run calibrates
    its threshold towards `target` (default best_f_star) within `threshold_bounds`, else
    `fallback_threshold`; bounds and fallback default to recommended_thresholds(hardening).
    `possible_matches`: a band of match probabilities whose pairs are possible matches.
    `custodian_duplicates`: the custodian may hold a person more than once (matching/kin.py).
    Thresholds far from those measured for the hardening (unusual_thresholds) are refused
    unless `allow_unusual_threshold`.

    With `require_purpose` (implied by the two after it), each requester batch must declare its
    purpose: free text of at most `purpose_max_length` characters (default 200), or one of
    `allowed_purposes`.
    """
    calibration = {
        "target": target,
        "min_precision": min_precision,
        "bounds": threshold_bounds and list(threshold_bounds),
        "fallback_threshold": fallback_threshold,
    }
    settings = {
        "reference": reference,
        "parties": {"requester": vars(requester), "custodian": vars(custodian)},
        "encoding": {
            "schema_sha256": schema_sha256,
            "bit_length": bit_length,
            "hardening": hardening,
        },
        "matching": {
            "decision": _decision_settings(threshold, threshold_floor, calibration),
            "possible_matches": possible_matches and list(possible_matches),
            "blocking": blocking,
            "custodian_duplicates": custodian_duplicates,
        },
        "release": {
            "requester": requester_release,
            "custodian": custodian_release,
            "possible_matches": possible_release,
            "ambiguity_margin": ambiguity_margin,
            "custodian_approval": custodian_approval,
        },
        "limits": {
            "max_records_per_upload": max_records_per_upload,
            "period_seconds": period_seconds,
            "max_uploads_per_period": max_uploads_per_period,
            "max_records_per_period": max_records_per_period,
            **_validity(valid_from, valid_days),
        },
        "retention": {
            "delete_encodings_after_release": delete_encodings_after_release,
            "encodings_ttl_seconds": encodings_ttl_seconds,
            "results_ttl_seconds": results_ttl_seconds,
        },
        "batch_purpose": _purpose_settings(require_purpose, purpose_max_length, allowed_purposes),
    }
    document = new_document(_given(settings))
    if not allow_unusual_threshold:
        refuse_unusual_thresholds(
            agreement_from_document(document), "pass allow_unusual_threshold=True"
        )
    return document


def _purpose_settings(
    required: bool | None, max_length: int | None, allowed: Sequence[str] | None
) -> dict[str, Any] | None:
    """The batch_purpose section as far as the settings give it: None when not required."""
    given = max_length is not None or allowed is not None
    if required is False and given:
        raise AgreementError(
            "batch_purpose: a maximum length or allowed purposes require a purpose; leave "
            "require_purpose out or set it"
        )
    if not (required or given):
        return None
    return {"max_length": max_length, "allowed": None if allowed is None else list(allowed)}


def _decision_settings(
    threshold: float | None, floor: float | None, calibration: dict[str, Any]
) -> dict[str, Any]:
    """The decision section as far as the settings give it; the model fills the rest."""
    given = [name for name, value in calibration.items() if value is not None]
    if threshold is None:
        if floor is not None:
            raise AgreementError(
                "matching.decision.threshold_floor: only a fixed threshold has a floor; a "
                "calibrated rule's bounds limit each run's threshold"
            )
        return {"rule": "calibrated", **calibration}
    if given:
        names = ", ".join("threshold_bounds" if name == "bounds" else name for name in given)
        raise AgreementError(
            f"matching.decision: give either a fixed threshold or calibration settings "
            f"({names}), not both"
        )
    return {"rule": "fixed", "threshold": threshold, "threshold_floor": floor}


def _validity(valid_from: datetime | None, valid_days: int | None) -> dict[str, str | None]:
    """limits.valid_from and valid_until as far as given (validity starts now by default)."""
    if valid_days is None:
        return {"valid_from": format_timestamp(valid_from) if valid_from else None}
    start = format_timestamp(valid_from) if valid_from else now_timestamp()
    until = parse_timestamp(start, "limits.valid_from") + timedelta(days=valid_days)
    return {"valid_from": start, "valid_until": format_timestamp(until)}


def _given(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings without those left None, section by section."""
    return {
        key: _given(value) if isinstance(value, dict) else value
        for key, value in settings.items()
        if value is not None
    }
