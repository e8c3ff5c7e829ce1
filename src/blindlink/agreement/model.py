"""The agreement document: strict parsing against its published JSON Schema, canonical bytes,
content hash (the project ID), and the signed envelope both parties sign.

The schema is `agreement.schema.json` beside this module (`blindlink agreement schema` prints
it). A signed agreement is the envelope `{"agreement": {...}, "signatures": {role: sig},
"certificates": {role: PEM}}` (agreement/signing.py): each party signs with the key of the client
certificate the agreement names for it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
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
from blindlink.matching.rules import CalibratedThreshold, DecisionRule, FixedThreshold, Target

FORMAT_VERSION = 1
ROLES = ("requester", "custodian")
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
POSSIBLE_RELEASES = ("count", "list")
# The tradeoff benchmark's recommendation (benchmarks/results/tradeoff.md): F* 0.958 with the
# worst re-identification at 1.2%.
RECOMMENDED_HARDENING: list[dict[str, Any]] = [{"kind": "diffusion", "t": 3}]


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
    certificate_sha256: str
    # Agreements written before parties signed with their certificate's key named a separate
    # Ed25519 key here. They still parse (their projects keep working) but create no projects.
    public_key: str | None = None


@dataclass(frozen=True)
class Agreement:
    """A parsed, validated agreement. Field names follow the document's sections."""

    document: dict[str, Any]
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

    @property
    def reference(self) -> str:
        return str(self.document["reference"])

    @property
    def ambiguity_margin(self) -> float:
        return self.decision.ambiguity_margin

    @property
    def decision_key(self) -> str:
        """Where the document states the decision rule: "matching.decision", or "matching" in
        agreements written before it. Refusals under the rule name keys below this."""
        return "matching.decision" if "decision" in self.document["matching"] else "matching"

    def rule_for_run(self, threshold: float) -> DecisionRule:
        """The decision rule of a run whose threshold `run_threshold` gave: a fixed rule at that
        threshold; a calibrated rule as agreed (its runs choose their own, so `threshold` is 0)."""
        if isinstance(self.decision.threshold, FixedThreshold):
            return replace(self.decision, threshold=FixedThreshold(threshold))
        return self.decision

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
    """Strict JSON: UTF-8, no duplicate keys, no NaN or infinities."""
    try:
        return json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=reject_duplicate_keys,
            parse_constant=_refuse_constant,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise AgreementError(f"{what} is not valid UTF-8 JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_agreement(raw: bytes) -> Agreement:
    """Parse and validate agreement bytes (the agreement object itself, not the envelope)."""
    return agreement_from_document(load_json(raw, "agreement"))


def agreement_from_document(document: Any) -> Agreement:
    """Validate a document against the JSON Schema and the rules a schema cannot express."""
    _check_values(document, "agreement")
    validator = _Validator(agreement_json_schema())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "agreement"
        raise AgreementError(f"{where}: {_schema_message(first)}")
    _validated_hardening(document["encoding"]["hardening"])
    parties = {role: Party(role, **document["parties"][role]) for role in ROLES}
    matching, release = document["matching"], document["release"]
    limits, retention = document["limits"], document["retention"]
    decision, threshold_floor = _decision(matching, release)
    agreement = Agreement(
        document=document,
        parties=parties,
        schema_sha256=document["encoding"]["schema_sha256"],
        bit_length=document["encoding"]["bit_length"],
        hardening=document["encoding"]["hardening"],
        decision=decision,
        threshold_floor=threshold_floor,
        blocking=_blocking(matching["blocking"]),
        release={role: ReleaseKind(release[role]) for role in ROLES},
        possible_release=release.get("possible_matches", "count"),
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


def _check_values(value: Any, where: str) -> None:
    """Refuse what has no canonical JSON form: NaN and infinities (a NaN floor would disable
    the floor, a NaN threshold fail every run) and strings that are not Unicode text (a lone
    surrogate cannot be encoded as UTF-8)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise AgreementError(f"{where}: {value} is not a finite number")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise AgreementError(f"{where}: the text holds a lone surrogate, not Unicode") from None
    if isinstance(value, dict):
        for key, item in value.items():
            _check_values(key, where)
            _check_values(item, f"{where}.{key}" if where != "agreement" else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_values(item, f"{where}[{index}]")


def _schema_message(error: jsonschema.ValidationError) -> str:
    """The validator's message, except where the matching section states no decision rule or
    two: the validator's words for that would not name the keys."""
    if error.validator == "oneOf" and list(error.absolute_path) == ["matching"]:
        return (
            "state the decision rule once: as 'decision', or (as agreements written before "
            "'decision' did) as 'threshold' and 'threshold_floor'"
        )
    return str(error.message)


def _validated_hardening(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    try:
        validate_steps(steps)
    except HardeningError as exc:
        raise AgreementError(f"encoding.{exc}") from None
    return steps


def _decision(
    matching: dict[str, Any], release: dict[str, Any]
) -> tuple[DecisionRule, float | None]:
    """The decision rule and, for a fixed threshold, its floor. An agreement written before
    'decision' states a fixed threshold as matching.threshold and matching.threshold_floor."""
    legacy = {k: matching.get(k) for k in ("threshold", "threshold_floor")}
    section = matching.get("decision", {"rule": "fixed", **legacy})
    threshold: FixedThreshold | CalibratedThreshold
    floor: float | None = None
    if section["rule"] == "fixed":
        threshold = FixedThreshold(float(section["threshold"]))
        floor = float(section["threshold_floor"])
    else:
        low, high = section["bounds"]
        threshold = CalibratedThreshold(
            Target(section["target"]),
            (float(low), float(high)),
            float(section["fallback_threshold"]),
            float(section.get("min_precision", 0.0)),
        )
    band = matching.get("possible_matches")
    return DecisionRule(
        threshold,
        None if band is None else (float(band[0]), float(band[1])),
        float(release["ambiguity_margin"]),
    ), floor


def _blocking(section: dict[str, Any]) -> Blocking | None:
    if section["method"] == "none":
        return None
    if section["method"] == "keys":
        return KeyBlocking.from_document(section["keys"])
    return LshBlocking(section["bands"], section["bits_per_band"], section["seed"])


def _check_consistency(agreement: Agreement) -> None:
    _check_decision(agreement)
    if agreement.valid_from >= agreement.valid_until:
        raise AgreementError("limits.valid_from must be before limits.valid_until")
    requester, custodian = agreement.parties["requester"], agreement.parties["custodian"]
    if requester.public_key is not None and requester.public_key == custodian.public_key:
        raise AgreementError("parties: the requester and the custodian have the same public key")
    if requester.certificate_sha256 == custodian.certificate_sha256:
        raise AgreementError("parties: the requester and the custodian have the same certificate")


def _check_decision(agreement: Agreement) -> None:
    key, rule = agreement.decision_key, agreement.decision
    chosen = rule.threshold
    if isinstance(chosen, FixedThreshold):
        floor = agreement.threshold_floor
        if floor is not None and floor > chosen.threshold:
            raise AgreementError(
                f"{key}.threshold_floor: {floor:g} must not exceed {key}.threshold "
                f"{chosen.threshold:g}"
            )
    else:
        _check_calibration(agreement.document["matching"]["decision"], chosen)
    band = rule.possible_band
    if band is not None and band[0] >= band[1]:
        raise AgreementError(
            f"matching.possible_matches: the band [{band[0]:g}, {band[1]:g}) is empty; its "
            "lower end must be below its upper end"
        )
    if agreement.possible_release == "list" and band is None:
        raise AgreementError(
            "release.possible_matches: 'list' releases possible matches, but the agreement has "
            "no matching.possible_matches band to find them"
        )


def _check_calibration(section: dict[str, Any], chosen: CalibratedThreshold) -> None:
    key = "matching.decision"
    wants_minimum = chosen.target is Target.MIN_PRECISION
    if wants_minimum and "min_precision" not in section:
        raise AgreementError(
            f"{key}.min_precision: the target min_precision needs the minimum estimated "
            "precision, in (0, 1]"
        )
    if not wants_minimum and "min_precision" in section:
        raise AgreementError(
            f"{key}.min_precision: only the target min_precision takes a minimum precision; "
            f"this rule's target is {chosen.target.value}"
        )
    low, high = chosen.bounds
    if low > high:
        raise AgreementError(
            f"{key}.bounds: the lower bound {low:g} exceeds the upper bound {high:g}"
        )
    if not low <= chosen.fallback_threshold <= high:
        raise AgreementError(
            f"{key}.fallback_threshold: {chosen.fallback_threshold:g} is outside the bounds "
            f"[{low:g}, {high:g}]"
        )


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
class ThresholdRange:
    """What the tradeoff benchmark measured for a kind of hardening: the range of its calibrated
    thresholds; and the calibration bounds and fallback threshold agreed by default with it."""

    measured: tuple[float, float]
    bounds: tuple[float, float]
    fallback: float
    hardening: str  # which configurations, in words

    def distance(self, threshold: float) -> float:
        """How far `threshold` lies outside the measured range (0 inside it)."""
        low, high = self.measured
        return max(low - threshold, threshold - high, 0.0)


# A fixed or fallback threshold this far outside the measured range is unusual.
UNUSUAL_DISTANCE = 0.1


def recommended_thresholds(hardening: list[dict[str, Any]]) -> ThresholdRange:
    """The measured threshold range for these hardening steps, with default bounds and fallback.

    From benchmarks/results/tradeoff.md (calibrated thresholds, generated data): 0.54-0.64 for
    the hardened configurations with diffusion, xor folding or rule 90; 0.63-0.75 with
    randomized response; 0.68-0.89 for unhardened ones, balancing and salting included.
    Hardened encodings are less similar, so their thresholds lie lower.
    """
    kinds = {step["kind"] for step in hardening}
    if kinds & {"diffusion", "xor_fold", "rule90"}:
        return ThresholdRange((0.54, 0.64), (0.5, 0.9), 0.6, "diffusion, xor folding or rule 90")
    if "randomized_response" in kinds:
        return ThresholdRange((0.63, 0.75), (0.5, 0.9), 0.6, "randomized response")
    return ThresholdRange((0.68, 0.89), (0.6, 0.95), 0.8, "no hardening, balancing or salting")


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
    possible_release: str = "count",
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
    """A new, validated agreement document. Validity starts now unless `valid_from` is given.

    With `threshold`, runs decide at that fixed threshold (batches may ask for another, not
    below `threshold_floor`, which defaults to the threshold). Without it, each run calibrates
    its threshold towards `target` (default best_f_star) within `threshold_bounds`, else
    `fallback_threshold`; bounds and fallback default to recommended_thresholds(hardening).
    `possible_matches`: a band of match probabilities whose pairs are possible matches.
    """
    steps = _validated_hardening(hardening or [])
    start = (valid_from or datetime.now(UTC)).replace(microsecond=0)
    calibration: dict[str, Any] = {
        "target": target,
        "min_precision": min_precision,
        "threshold_bounds": threshold_bounds,
        "fallback_threshold": fallback_threshold,
    }
    if threshold is None:
        decision = _calibrated_section(steps, threshold_floor, **calibration)
    else:
        decision = _fixed_section(threshold, threshold_floor, calibration)
    matching: dict[str, Any] = {
        "decision": decision,
        "blocking": blocking or {"method": "none"},
        "solver": "greedy",
    }
    if possible_matches is not None:
        matching["possible_matches"] = list(possible_matches)
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
            "hardening": steps,
        },
        "matching": matching,
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


def _fixed_section(
    threshold: float, floor: float | None, calibration: dict[str, Any]
) -> dict[str, Any]:
    given = [name for name, value in calibration.items() if value is not None]
    if given:
        raise AgreementError(
            f"matching.decision: give either a fixed threshold or calibration settings "
            f"({', '.join(given)}), not both"
        )
    return {
        "rule": "fixed",
        "threshold": threshold,
        "threshold_floor": threshold if floor is None else floor,
    }


def _calibrated_section(
    hardening: list[dict[str, Any]],
    threshold_floor: float | None,
    target: str | None,
    min_precision: float | None,
    threshold_bounds: tuple[float, float] | None,
    fallback_threshold: float | None,
) -> dict[str, Any]:
    """A calibrated rule; bounds and fallback default to the hardening's recommended ones (a
    default fallback moves into explicit bounds)."""
    if threshold_floor is not None:
        raise AgreementError(
            "matching.decision.threshold_floor: only a fixed threshold has a floor; a "
            "calibrated rule's bounds limit each run's threshold"
        )
    recommended = recommended_thresholds(hardening)
    low, high = threshold_bounds or recommended.bounds
    fallback = min(max(recommended.fallback, low), high)
    section: dict[str, Any] = {
        "rule": "calibrated",
        "target": target or Target.BEST_F_STAR.value,
        "bounds": [low, high],
        "fallback_threshold": fallback if fallback_threshold is None else fallback_threshold,
    }
    if min_precision is not None:
        section["min_precision"] = min_precision
    return section
