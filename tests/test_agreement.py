"""The agreement document (strict parsing against the published JSON Schema, canonical bytes,
project ID) and the signed envelope both parties sign."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import rfc8785
from conftest import Identities
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from blindlink.agreement.document import (
    FORMAT_VERSION,
    ROLES,
    ReleaseKind,
    ThresholdRange,
    agreement_json_schema,
    recommended_thresholds,
)
from blindlink.agreement.model import (
    Agreement,
    PartyInfo,
    agreement_from_document,
    new_agreement_document,
    parse_agreement,
    unusual_thresholds,
)
from blindlink.agreement.signing import SIGNING_CONTEXT, SignedAgreement, parse_signed, sign_as
from blindlink.canonical import canonical_json
from blindlink.errors import AgreementError
from blindlink.matching.blocking import LshBlocking
from blindlink.matching.rules import CalibratedThreshold, DecisionRule, FixedThreshold, Target
from blindlink.security.certificate_signing import PrivateKey, sign_with_key, signed_by_certificate
from blindlink.security.keys import public_key_text, sign
from blindlink.security.pki import certificate_fingerprint

Document = dict[str, Any]
SCHEMA_HASH = hashlib.sha256(b"a linkage schema").hexdigest()


def certificate(key: PrivateKey, name: str) -> bytes:
    """A self-signed PEM certificate of `key` (the same bytes every time for Ed25519 keys)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2026, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2036, 1, 1, tzinfo=UTC))
    )
    algorithm = None if isinstance(key, Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


# Each party's certificate key signs; CERTS are the certificates' fingerprints.
KEYS = {
    role: Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32) for n, role in enumerate(ROLES, 1)
}
CERT_PEMS = {role: certificate(KEYS[role], role) for role in ROLES}
CERTS = {role: certificate_fingerprint(CERT_PEMS[role]) for role in ROLES}
START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
# An agreement as blindlink wrote them before matching.decision, and its project ID then.
BEFORE_DECISION = Path(__file__).parent / "data" / "agreement-before-decision.json"
BEFORE_DECISION_PROJECT_ID = "64f193ccf43f3a3986aed746a83af5e6288ed1f15ca4d84dc09f4e90066fdcdd"
# An agreement of format 1 that both parties signed, as written by the format-1 code.
FORMAT_1_SIGNED = Path(__file__).parent / "data" / "agreement-v1-signed.json"
FORMAT_1_PROJECT_ID = "9fff513eeb65200841e5e3dc934a49ca325a9787c7e4dd2bef7e82a4dfddcc52"
DIFFUSION = [{"kind": "diffusion", "t": 3}]


def party(role: str) -> PartyInfo:
    return PartyInfo(f"{role} agency", CERTS[role])


def document(**settings: Any) -> Document:
    """A valid agreement document; keyword arguments are new_agreement_document's settings."""
    base: dict[str, Any] = {"reference": "DSA-2026-017", "valid_from": START, "hardening": []}
    base.update(settings)
    return new_agreement_document(
        requester=party("requester"),
        custodian=party("custodian"),
        schema_sha256=SCHEMA_HASH,
        bit_length=1024,
        **base,
    )


def edited(edit: Callable[[Document], None], base: Document | None = None) -> bytes:
    """The JSON of a valid document (default: `document()`) after `edit` changed a copy."""
    changed = copy.deepcopy(base or document())
    edit(changed)
    return json.dumps(changed).encode()


def before_decision() -> Document:
    return dict(json.loads(BEFORE_DECISION.read_text(encoding="utf-8")))


def agreement_error(raw: bytes) -> str:
    with pytest.raises(AgreementError) as info:
        parse_agreement(raw)
    return str(info.value)


def signed_by(roles: tuple[str, ...] = ROLES, doc: Document | None = None) -> SignedAgreement:
    signed = SignedAgreement(agreement_from_document(doc or document()), {})
    for role in roles:
        signed = sign_as(signed, role, CERT_PEMS[role], KEYS[role])
    return signed


def envelope(signed: SignedAgreement) -> Document:
    return dict(json.loads(signed.to_bytes()))


def set_key(path: str, value: Any) -> Callable[[Document], None]:
    """An edit that sets the dotted `path` (creating the last key if need be)."""

    def edit(doc: Document) -> None:
        *parents, last = path.split(".")
        target = doc
        for name in parents:
            target = target[name]
        target[last] = value

    return edit


def delete_key(path: str) -> Callable[[Document], None]:
    def edit(doc: Document) -> None:
        *parents, last = path.split(".")
        target = doc
        for name in parents:
            target = target[name]
        del target[last]

    return edit


# --- valid documents -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"threshold": 0.95, "threshold_floor": 0.7, "ambiguity_margin": 0.05},
        {"hardening": DIFFUSION, "target": "min_precision", "min_precision": 0.98},
        {"possible_matches": (0.2, 0.9), "possible_release": "list"},
        {"blocking": {"method": "lsh", "bands": 20, "bits_per_band": 16, "seed": 7}},
        {"requester_release": "pairs", "custodian_release": "nothing", "custodian_approval": True},
        {"require_purpose": True},
        {"allowed_purposes": ["fraud review", "Überprüfung № 7"]},
        {
            "requester_release": "count",
            "custodian_release": "own_rows",
            "valid_days": 1,
            "delete_encodings_after_release": False,
            "encodings_ttl_seconds": 1,
            "results_ttl_seconds": 1,
            "period_seconds": 1,
            "max_uploads_per_period": 1,
            "max_records_per_period": 1,
            "max_records_per_upload": 1,
        },
    ],
)
def test_new_document_validates_against_the_published_schema(settings: dict[str, Any]) -> None:
    schema = agreement_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    doc = document(**settings)
    jsonschema.Draft202012Validator(schema).validate(doc)
    assert doc["blindlink_agreement"] == FORMAT_VERSION == 2


def test_document_round_trips_through_canonical_bytes() -> None:
    doc = document(
        threshold=0.9,
        threshold_floor=0.75,
        requester_release="pairs",
        custodian_release="nothing",
        ambiguity_margin=0.02,
        custodian_approval=True,
        max_records_per_upload=500,
        period_seconds=3600,
        max_uploads_per_period=3,
        max_records_per_period=900,
        valid_days=10,
        delete_encodings_after_release=False,
        encodings_ttl_seconds=60,
        results_ttl_seconds=120,
    )
    agreement = parse_agreement(canonical_json(doc))
    assert agreement.document == doc
    assert agreement.canonical_bytes == canonical_json(doc)
    assert agreement.reference == "DSA-2026-017"
    assert {
        r: (p.name, p.public_key, p.certificate_sha256) for r, p in agreement.parties.items()
    } == {r: (f"{r} agency", None, CERTS[r]) for r in ROLES}
    assert (agreement.schema_sha256, agreement.bit_length) == (SCHEMA_HASH, 1024)
    assert agreement.decision == DecisionRule(FixedThreshold(0.9), None, 0.02)
    assert agreement.threshold_floor == 0.75
    assert agreement.release == {"requester": ReleaseKind.PAIRS, "custodian": ReleaseKind.NOTHING}
    assert agreement.possible_release == "count"
    assert (agreement.ambiguity_margin, agreement.custodian_approval) == (0.02, True)
    assert (
        agreement.max_records_per_upload,
        agreement.period_seconds,
        agreement.max_uploads_per_period,
        agreement.max_records_per_period,
    ) == (500, 3600, 3, 900)
    assert agreement.valid_from == START
    assert agreement.valid_until == START + timedelta(days=10)
    assert (
        agreement.delete_encodings_after_release,
        agreement.encodings_ttl_seconds,
        agreement.results_ttl_seconds,
    ) == (False, 60, 120)


def test_threshold_floor_defaults_to_the_threshold() -> None:
    agreement = agreement_from_document(document(threshold=0.85))
    assert agreement.decision.threshold == FixedThreshold(0.85)
    assert agreement.threshold_floor == 0.85


def test_blocking_is_none_unless_lsh_is_agreed() -> None:
    assert agreement_from_document(document()).blocking is None
    lsh = {"method": "lsh", "bands": 20, "bits_per_band": 16, "seed": 7}
    assert agreement_from_document(document(blocking=lsh)).blocking == LshBlocking(20, 16, 7)


def test_validity_starts_now_unless_given() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    agreement = agreement_from_document(document(valid_from=None, valid_days=2))
    after = datetime.now(UTC)
    assert before <= agreement.valid_from <= after
    assert agreement.valid_until - agreement.valid_from == timedelta(days=2)


def test_project_id_is_the_sha256_of_the_rfc8785_bytes() -> None:
    """An auditor recomputes a project ID with any RFC 8785 (JCS) library: numbers in their
    shortest ECMAScript form (0, not 0.0; 1e-7, not 1e-07), keys sorted, no whitespace."""
    doc = document(
        reference="Überweisung № 7",
        threshold=1.0,
        threshold_floor=1e-7,
        allow_unusual_threshold=True,
    )
    agreement = parse_agreement(json.dumps(doc).encode())
    assert agreement.format_version == FORMAT_VERSION == 2
    assert agreement.canonical_bytes == rfc8785.dumps(json.loads(json.dumps(doc)))
    assert agreement.project_id == hashlib.sha256(rfc8785.dumps(doc)).hexdigest()
    for written in [b'"ambiguity_margin":0,', b'"threshold":1,', b'"threshold_floor":1e-7}']:
        assert written in agreement.canonical_bytes
    assert "Überweisung № 7".encode() in agreement.canonical_bytes


def test_format_1_agreement_signed_before_format_2_still_verifies() -> None:
    """tests/data/agreement-v1-signed.json: written and signed by both parties with the code of
    format 1. Its signatures and project ID hold over its format-1 canonical bytes."""
    raw = FORMAT_1_SIGNED.read_bytes()
    signed = parse_signed(raw)
    assert signed.problems() == []
    agreement = signed.agreement
    assert agreement.format_version == 1
    assert agreement.project_id == FORMAT_1_PROJECT_ID
    assert agreement.canonical_bytes == canonical_json(json.loads(raw)["agreement"])
    assert b'"ambiguity_margin":0.0' in agreement.canonical_bytes  # not RFC 8785
    assert agreement.decision == DecisionRule(
        CalibratedThreshold(Target.BEST_F_STAR, (0.5, 0.9), 0.6), (0.2, 0.9)
    )
    assert (agreement.possible_release, agreement.hardening) == ("list", DIFFUSION)
    assert signed.to_bytes() == parse_signed(signed.to_bytes()).to_bytes()


def test_a_format_2_agreement_must_state_every_field() -> None:
    """The defaults fill new agreements only: what is signed is what a reader sees."""
    for path in ["release.possible_matches", "limits.period_seconds", "matching.blocking"]:
        section, _, key = path.rpartition(".")
        assert agreement_error(edited(delete_key(path))) == f"{section}: '{key}' is required"


def test_project_id_does_not_depend_on_formatting_or_key_order() -> None:
    doc = document(reference="Überweisung № 7")
    expected = agreement_from_document(doc).project_id

    def reversed_keys(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: reversed_keys(value[k]) for k in reversed(list(value))}
        return value

    variants = [
        canonical_json(doc),
        json.dumps(doc, indent=4).encode(),
        json.dumps(reversed_keys(doc), ensure_ascii=True).encode(),
        json.dumps(reversed_keys(doc), indent="\t", separators=(" , ", " : ")).encode(),
    ]
    assert len(set(variants)) == len(variants)
    assert {parse_agreement(raw).project_id for raw in variants} == {expected}


def test_project_id_does_not_depend_on_how_a_whole_number_is_written() -> None:
    """JSON has one number type: 1024 and 1024.0 are the same number, so the same agreement.
    A document that writes them differently must get the same project ID (or be refused)."""
    expected = agreement_from_document(document()).project_id
    for path, value in [
        ("encoding.bit_length", 1024.0),
        ("blindlink_agreement", 1.0),
        ("limits.period_seconds", 86400.0),
    ]:
        raw = edited(set_key(path, value))
        try:
            project_id = parse_agreement(raw).project_id
        except AgreementError:
            continue
        assert project_id == expected, f"{path} written as {value!r} changes the project ID"


def test_project_id_changes_with_the_reference() -> None:
    first = agreement_from_document(document(reference="DSA-2026-017"))
    second = agreement_from_document(document(reference="DSA-2026-018"))
    assert first.project_id != second.project_id
    assert len(first.project_id) == 64


def test_role_for_certificate() -> None:
    agreement = agreement_from_document(document())
    assert agreement.role_for_certificate(CERTS["requester"]) == "requester"
    assert agreement.role_for_certificate(CERTS["custodian"]) == "custodian"
    assert agreement.role_for_certificate("0" * 64) is None
    assert agreement.role_for_certificate(None) is None


# --- the decision rule -----------------------------------------------------------------------


def test_agreement_written_before_decision_parses_with_the_same_project_id() -> None:
    raw = BEFORE_DECISION.read_bytes()
    agreement = parse_agreement(raw)
    assert agreement.project_id == BEFORE_DECISION_PROJECT_ID
    assert agreement.canonical_bytes == canonical_json(json.loads(raw))
    assert agreement.decision == DecisionRule(FixedThreshold(0.85), None, 0.02)
    assert (agreement.threshold_floor, agreement.decision_key) == (0.75, "matching")
    assert (agreement.possible_release, agreement.ambiguity_margin) == ("count", 0.02)


CALIBRATED = {"rule": "calibrated", "target": "best_f_star", "bounds": [0.5, 0.9]}

# (matching.decision, matching.possible_matches, release.possible_matches) -> the parsed rule
# (ambiguity margin 0) and possible release
DECISION_FORMS: list[tuple[Document, Any, Any, DecisionRule, str]] = [
    (
        {"rule": "fixed", "threshold": 0.8, "threshold_floor": 0.7},
        None,
        None,
        DecisionRule(FixedThreshold(0.8)),
        "count",
    ),
    (
        {**CALIBRATED, "fallback_threshold": 0.6},
        None,
        "count",
        DecisionRule(CalibratedThreshold(Target.BEST_F_STAR, (0.5, 0.9), 0.6)),
        "count",
    ),
    (
        {**CALIBRATED, "target": "min_precision", "min_precision": 1, "fallback_threshold": 0.9},
        [0.2, 0.9],
        "list",
        DecisionRule(CalibratedThreshold(Target.MIN_PRECISION, (0.5, 0.9), 0.9, 1.0), (0.2, 0.9)),
        "list",
    ),
    (
        {**CALIBRATED, "bounds": [0.7, 0.7], "fallback_threshold": 0.7},
        [0, 1],
        None,
        DecisionRule(CalibratedThreshold(Target.BEST_F_STAR, (0.7, 0.7), 0.7), (0.0, 1.0)),
        "count",
    ),
]


@pytest.mark.parametrize(
    ("section", "band", "release", "rule", "possible_release"),
    DECISION_FORMS,
    ids=["fixed", "best_f_star", "min_precision with a band", "one threshold, whole band"],
)
def test_decision_forms_parse(
    section: Document, band: Any, release: Any, rule: DecisionRule, possible_release: str
) -> None:
    def edit(doc: Document) -> None:
        doc["matching"]["decision"] = section
        if band is not None:
            doc["matching"]["possible_matches"] = band
        doc["release"]["possible_matches"] = release or "count"

    raw = edited(edit)
    jsonschema.Draft202012Validator(agreement_json_schema()).validate(json.loads(raw))
    agreement = parse_agreement(raw)
    assert (agreement.decision, agreement.possible_release) == (rule, possible_release)
    assert agreement.decision_key == "matching.decision"


def _fixed_form(doc: Document) -> None:
    doc["matching"]["decision"] = {"rule": "fixed", "threshold": 0.8, "threshold_floor": 0.7}


def _both_forms(doc: Document) -> None:
    doc["matching"].update(threshold=0.8, threshold_floor=0.8)


def _no_form(doc: Document) -> None:
    del doc["matching"]["decision"]


def _decision(**changes: Any) -> Callable[[Document], None]:
    def edit(doc: Document) -> None:
        doc["matching"]["decision"].update(changes)
        for key in [k for k, v in changes.items() if v is None]:
            del doc["matching"]["decision"][key]

    return edit


def _then(*edits: Callable[[Document], None]) -> Callable[[Document], None]:
    def edit(doc: Document) -> None:
        for each in edits:
            each(doc)

    return edit


ONE_RULE = "state the decision rule once: as 'decision', or"

# (edit of the default document, its refusal's start, words in it): refusals the published
# schema states...
SCHEMA_REFUSALS = [
    (_no_form, "matching: ", "'decision' is required"),
    (_both_forms, "matching: ", "'threshold' is not a known key"),
    (_decision(rule="learned"), "matching.decision.rule: ", "'learned' is not one of"),
    (_decision(rule=None), "matching.decision: ", "'rule' is required"),
    (_decision(fallback_threshold=None), "matching.decision: ", "'fallback_threshold' is required"),
    (_decision(target="best_recall"), "matching.decision.target: ", "Input should be"),
    (_decision(bounds=[0.5]), "matching.decision.bounds: ", "at least 2 items"),
    (_decision(bounds=[0, 0.9]), "matching.decision.bounds[0]: ", "greater than 0"),
    (_decision(fallback_threshold=1.2), "matching.decision.fallback_threshold: ", "or equal to 1"),
    (
        _decision(target="min_precision", min_precision=0),
        "matching.decision.min_precision: ",
        "greater than 0",
    ),
    (set_key("matching.decision.min_precision", None), "matching.decision: ", "is null"),
    (_decision(threshold=0.8), "matching.decision: ", "'threshold' is not a known key"),
    (_then(_fixed_form, _decision(threshold=0)), "matching.decision.threshold: ", "greater than 0"),
    (
        _then(_fixed_form, _decision(bounds=[0.5, 0.9])),
        "matching.decision: ",
        "'bounds' is not a known key",
    ),
    (
        set_key("matching.possible_matches", [0.2, 1.1]),
        "matching.possible_matches[1]: ",
        "or equal",
    ),
    (set_key("matching.possible_matches", 0.5), "matching.possible_matches: ", "a valid list"),
    (set_key("release.possible_matches", "pairs"), "release.possible_matches: ", "'count' or"),
]
# ...and those only its descriptions state, relations between values that parsing checks.
CONSISTENCY_REFUSALS = [
    (_decision(bounds=[0.9, 0.6]), "matching.decision.bounds: ", "0.9 exceeds the upper bound 0.6"),
    (
        _decision(fallback_threshold=0.97),
        "matching.decision.fallback_threshold: ",
        "0.97 is outside the bounds [0.6, 0.95]",
    ),
    (
        _decision(target="min_precision"),
        "matching.decision.min_precision: ",
        "the target min_precision needs",
    ),
    (
        _decision(min_precision=0.9),
        "matching.decision.min_precision: ",
        "only the target min_precision takes",
    ),
    (
        _then(_fixed_form, _decision(threshold_floor=0.85)),
        "matching.decision.threshold_floor: ",
        "0.85 must not exceed matching.decision.threshold 0.8",
    ),
    (set_key("matching.possible_matches", [0.5, 0.5]), "matching.possible_matches: ", "is empty"),
    (
        set_key("release.possible_matches", "list"),
        "release.possible_matches: ",
        "no matching.possible_matches band",
    ),
]


@pytest.mark.parametrize(
    ("edit", "start", "words", "in_schema"),
    [(*case, True) for case in SCHEMA_REFUSALS] + [(*case, False) for case in CONSISTENCY_REFUSALS],
    ids=[f"{start}{words}" for _, start, words in SCHEMA_REFUSALS + CONSISTENCY_REFUSALS],
)
def test_invalid_decision_is_refused_naming_its_key(
    edit: Callable[[Document], None], start: str, words: str, in_schema: bool
) -> None:
    raw = edited(edit)
    message = agreement_error(raw)
    assert message.startswith(start), message
    assert words in message, message
    validator = jsonschema.Draft202012Validator(agreement_json_schema())
    assert validator.is_valid(json.loads(raw)) is not in_schema


# Format 1 stated a fixed rule as matching.threshold and matching.threshold_floor instead.
LEGACY_REFUSALS = [
    (_fixed_form, ONE_RULE),
    (_then(delete_key("matching.threshold"), delete_key("matching.threshold_floor")), ONE_RULE),
    (delete_key("matching.threshold"), "'threshold' is required with"),
    (delete_key("matching.threshold_floor"), "'threshold_floor' is required with"),
]


@pytest.mark.parametrize(("edit", "words"), LEGACY_REFUSALS, ids=[w for _, w in LEGACY_REFUSALS])
def test_format_1_decision_is_stated_once(edit: Callable[[Document], None], words: str) -> None:
    message = agreement_error(edited(edit, before_decision()))
    assert message.startswith(f"matching: {words}"), message


@pytest.mark.parametrize(
    ("base", "threshold", "expected"),
    [
        ({"threshold": 0.9, "threshold_floor": 0.7}, 0.75, FixedThreshold(0.75)),
        ({"threshold": 0.9}, 0.9, FixedThreshold(0.9)),
        ({}, 0.0, CalibratedThreshold(Target.BEST_F_STAR, (0.6, 0.95), 0.8)),
    ],
)
def test_rule_for_run(base: dict[str, Any], threshold: float, expected: Any) -> None:
    settings = {"possible_matches": (0.3, 0.9), "ambiguity_margin": 0.05, **base}
    agreement = agreement_from_document(document(**settings))
    assert agreement.rule_for_run(threshold) == DecisionRule(expected, (0.3, 0.9), 0.05)


# --- new agreements: the decision rule's defaults --------------------------------------------

HARDENED = ThresholdRange((0.54, 0.64), (0.5, 0.9), 0.6, "diffusion, xor folding or rule 90")
RANDOMIZED = ThresholdRange((0.63, 0.75), (0.5, 0.9), 0.6, "randomized response")
PLAIN = ThresholdRange((0.68, 0.89), (0.6, 0.95), 0.8, "no hardening, balancing or salting")
SALT = {"kind": "salt", "field": "date_of_birth", "part": "year"}


@pytest.mark.parametrize(
    ("hardening", "expected"),
    [
        ([], PLAIN),
        ([{"kind": "balance"}], PLAIN),
        ([SALT], PLAIN),
        (DIFFUSION, HARDENED),
        ([SALT, {"kind": "xor_fold", "folds": 1}], HARDENED),
        ([{"kind": "rule90"}, {"kind": "balance"}], HARDENED),
        ([{"kind": "randomized_response", "p": 0.05}], RANDOMIZED),
        ([{"kind": "randomized_response", "p": 0.05}, {"kind": "diffusion", "t": 2}], HARDENED),
    ],
)
def test_recommended_thresholds_follow_the_hardening(
    hardening: list[dict[str, Any]], expected: ThresholdRange
) -> None:
    assert recommended_thresholds(hardening) == expected
    agreement = agreement_from_document(document(hardening=hardening))
    assert agreement.decision == DecisionRule(
        CalibratedThreshold(Target.BEST_F_STAR, expected.bounds, expected.fallback)
    )
    assert (agreement.threshold_floor, agreement.possible_release) == (None, "count")
    assert "possible_matches" not in agreement.document["matching"]
    assert unusual_thresholds(agreement) is None


def test_new_calibrated_agreement_with_explicit_settings() -> None:
    agreement = agreement_from_document(
        document(
            hardening=DIFFUSION,
            target="min_precision",
            min_precision=0.99,
            threshold_bounds=(0.55, 0.7),
            fallback_threshold=0.65,
            possible_matches=(0.4, 0.95),
            possible_release="list",
        )
    )
    assert agreement.decision == DecisionRule(
        CalibratedThreshold(Target.MIN_PRECISION, (0.55, 0.7), 0.65, 0.99), (0.4, 0.95)
    )
    assert agreement.possible_release == "list"


@pytest.mark.parametrize(
    ("bounds", "fallback"), [((0.7, 0.9), 0.7), ((0.4, 0.5), 0.5), ((0.5, 0.6), 0.6)]
)
def test_default_fallback_moves_into_explicit_bounds(
    bounds: tuple[float, float], fallback: float
) -> None:
    agreement = agreement_from_document(
        document(hardening=DIFFUSION, threshold_bounds=bounds, allow_unusual_threshold=True)
    )
    assert agreement.decision.threshold == CalibratedThreshold(Target.BEST_F_STAR, bounds, fallback)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"threshold": 0.8, "target": "best_f_star"}, r"^matching.decision: .*\(target\)"),
        ({"threshold": 0.8, "threshold_bounds": (0.5, 0.9)}, r"\(threshold_bounds\), not both"),
        ({"threshold": 0.8, "fallback_threshold": 0.8}, r"\(fallback_threshold\), not both"),
        ({"threshold_floor": 0.7}, "^matching.decision.threshold_floor: only a fixed"),
        ({"target": "min_precision"}, "^matching.decision.min_precision: "),
        ({"fallback_threshold": 0.5}, "^matching.decision.fallback_threshold: 0.5 is outside"),
        ({"possible_release": "list"}, "^release.possible_matches: "),
        ({"possible_release": "all"}, "^release.possible_matches: Input should be 'count' or"),
    ],
)
def test_new_agreement_refuses_conflicting_decision_settings(
    settings: dict[str, Any], words: str
) -> None:
    with pytest.raises(AgreementError, match=words):
        document(**settings)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"threshold": 0.8}, None),
        ({"threshold": 0.58}, None),
        ({"threshold": 0.99}, None),
        ({"threshold": 0.57}, "the threshold 0.57 lies more than 0.1 outside the range 0.68-0.89"),
        ({"hardening": DIFFUSION, "threshold": 0.74}, None),
        ({"hardening": DIFFUSION, "threshold": 0.44}, None),
        ({"hardening": DIFFUSION, "threshold": 0.8}, "0.8 lies more than 0.1 outside the range"),
        ({"hardening": DIFFUSION, "threshold": 0.4}, "(this agreement's hardening: diffusion t=3)"),
        ({"hardening": DIFFUSION, "threshold_bounds": (0.64, 0.9)}, None),
        ({"hardening": DIFFUSION, "threshold_bounds": (0.65, 0.9)}, "bounds [0.65, 0.9] do not"),
        ({"threshold_bounds": (0.5, 0.67)}, "bounds [0.5, 0.67] do not overlap the range 0.68"),
        ({"hardening": DIFFUSION, "fallback_threshold": 0.8}, "the fallback threshold 0.8 lies"),
    ],
)
def test_unusual_thresholds_for_the_hardening(settings: dict[str, Any], words: str | None) -> None:
    problem = unusual_thresholds(
        agreement_from_document(document(**settings, allow_unusual_threshold=True))
    )
    if words is None:
        assert problem is None
        document(**settings)
    else:
        assert problem is not None and words in problem, problem
        with pytest.raises(AgreementError) as refused:
            document(**settings)
        assert str(refused.value) == (
            f"{problem}, so runs would lose recall or precision. Leave out the threshold "
            "settings to let each run calibrate its threshold within the recommended bounds, "
            "or pass allow_unusual_threshold=True to agree on these settings anyway"
        )


# --- invalid documents: every refusal names the path -----------------------------------------

SECTIONS = ["parties", "encoding", "matching", "release", "limits", "retention"]
UNKNOWN_KEY_PLACES = ["", "parties", "parties.requester", "parties.custodian", *SECTIONS[1:]]


@pytest.mark.parametrize("place", UNKNOWN_KEY_PLACES, ids=lambda p: p or "top level")
def test_unknown_key_is_refused_naming_its_section(place: str) -> None:
    path = f"{place}.surprise" if place else "surprise"
    message = agreement_error(edited(set_key(path, 1)))
    assert message.startswith(f"{place or 'agreement'}: ")
    assert "'surprise'" in message


@pytest.mark.parametrize("section", [*SECTIONS, "reference", "blindlink_agreement"])
def test_missing_section_is_refused(section: str) -> None:
    message = agreement_error(edited(delete_key(section)))
    assert message.startswith(f"agreement: '{section}' "), message
    assert "is required" in message


@pytest.mark.parametrize(
    "path",
    [
        "parties.requester.certificate_sha256",
        "encoding.hardening",
        "matching.solver",
        "release.custodian_approval",
        "limits.valid_until",
        "retention.results_ttl_seconds",
    ],
)
def test_missing_key_inside_a_section_is_refused(path: str) -> None:
    section, _, key = path.rpartition(".")
    message = agreement_error(edited(delete_key(path)))
    assert message == f"{section}: '{key}' is required"


INVALID_VALUES = [
    ("release.requester", "everything", "Input should be 'own_rows', 'pairs', 'count' or"),
    ("release.custodian", "own_row", "Input should be 'own_rows'"),
    ("release.custodian", None, "Input should be 'own_rows'"),
    ("matching.decision.fallback_threshold", 0, "greater than 0"),
    ("matching.decision.fallback_threshold", 1.5, "less than or equal to 1"),
    ("matching.decision.fallback_threshold", "0.8", "a valid number"),
    ("matching.decision.min_precision", True, "a valid number"),
    ("matching.decision", "calibrated", "must be an object, not a string"),
    ("matching.blocking", "none", "must be an object, not a string"),
    ("matching.blocking.method", "sorted-neighbourhood", "is not one of 'none', 'lsh', 'keys'"),
    ("matching.blocking", {"method": "lsh", "bands": 0, "bits_per_band": 8, "seed": 1}, ""),
    ("matching.solver", "optimal", "Input should be 'greedy'"),
    ("release.ambiguity_margin", -0.1, "greater than or equal to 0"),
    ("release.custodian_approval", 1, "a valid boolean"),
    ("matching.custodian_duplicates", "yes", "a valid boolean"),
    ("matching.custodian_duplicates", 1, "a valid boolean"),
    ("encoding.bit_length", 1001, "a multiple of 8"),
    ("encoding.bit_length", 0, "greater than or equal to 8"),
    ("encoding.bit_length", "1024", "a valid integer"),
    ("encoding.bit_length", 1024.0, "a valid integer"),
    ("encoding.schema_sha256", SCHEMA_HASH.upper(), "should match pattern"),
    ("encoding.schema_sha256", SCHEMA_HASH[:63], "should match pattern"),
    ("encoding.schema_sha256", "g" * 64, "should match pattern"),
    ("encoding.schema_sha256", SCHEMA_HASH + "0", "should match pattern"),
    ("parties.custodian.certificate_sha256", "sha256:" + CERTS["custodian"], "should match"),
    ("parties.requester.certificate_sha256", CERTS["requester"][:40], "should match pattern"),
    ("parties.requester.name", "", "at least 1 character"),
    ("limits.max_records_per_upload", 0, "greater than or equal to 1"),
    ("limits.period_seconds", 1.5, "a valid integer"),
    ("retention.encodings_ttl_seconds", -1, "greater than or equal to 1"),
    ("retention.delete_encodings_after_release", "yes", "a valid boolean"),
    ("limits.valid_from", "2026-12-01 00:00:00", "should match pattern"),
    ("limits.valid_until", "2026-12-01T00:00:00+01:00", "should match pattern"),
    ("limits.valid_from", "2026-13-01T00:00:00Z", "is not a UTC time"),
    ("limits.valid_until", "2027-02-30T00:00:00Z", "is not a UTC time"),
    ("blindlink_agreement", True, "true is not a format this blindlink reads (1, 2)"),
    ("blindlink_agreement", 3, "3 is not a format this blindlink reads"),
    ("blindlink_agreement", 2.0, "2.0 is not a format this blindlink reads"),
    ("reference", "", "at least 1 character"),
    ("parties", [], "must be an object, not an array"),
]
# Format 1 only: a party's separate signing key.
LEGACY_KEYS = [
    ("parties.requester.public_key", "ed25519:short=", "does not match"),
    ("parties.requester.public_key", public_key_text(KEYS["requester"])[8:], "does not match"),
    (
        "parties.custodian.public_key",
        "rsa:" + public_key_text(KEYS["custodian"])[8:],
        "does not match",
    ),
]


@pytest.mark.parametrize(
    ("path", "value", "words"), INVALID_VALUES, ids=[f"{p}={v!r}" for p, v, _ in INVALID_VALUES]
)
def test_invalid_value_is_refused_naming_its_path(path: str, value: Any, words: str) -> None:
    message = agreement_error(edited(set_key(path, value)))
    assert message.startswith(f"{path}: ") or message.startswith(f"{path}.bands: "), message
    assert words in message, message


@pytest.mark.parametrize(("path", "value", "words"), LEGACY_KEYS)
def test_invalid_format_1_signing_key_is_refused_naming_its_path(
    path: str, value: Any, words: str
) -> None:
    message = agreement_error(edited(set_key(path, value), before_decision()))
    assert message.startswith(f"{path}: "), message
    assert words in message, message
    assert "'public_key' is not a known key" in agreement_error(edited(set_key(path, value)))


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        ("matching.threshold", 0, "greater than 0"),
        ("matching.threshold", 1.5, "less than or equal to 1"),
        ("matching.threshold", "0.8", "a valid number"),
        ("matching.threshold", True, "a valid number"),
        ("matching.threshold_floor", 0, "greater than 0"),
    ],
)
def test_invalid_threshold_before_decision_is_refused_naming_its_path(
    path: str, value: Any, words: str
) -> None:
    message = agreement_error(edited(set_key(path, value), before_decision()))
    assert message.startswith(f"{path}: ")
    assert words in message


@pytest.mark.parametrize(
    ("steps", "words"),
    [
        (["bit-flip"], "must be an object, not a string"),
        ([{"kind": "bit-flip"}], "bit-flip"),
        ([{"kind": "xor_fold"}], "folds"),
        ([{"kind": "xor_fold", "folds": 1, "fold": 2}], "fold"),
    ],
)
def test_invalid_hardening_step_is_refused(steps: list[Any], words: str) -> None:
    message = agreement_error(edited(set_key("encoding.hardening", steps)))
    assert message.startswith("encoding.hardening")
    assert words in message


def test_hardening_steps_are_accepted() -> None:
    steps = [{"kind": "xor_fold", "folds": 1}, {"kind": "diffusion", "t": 8}]
    agreement = parse_agreement(edited(set_key("encoding.hardening", steps)))
    assert agreement.hardening == steps


def test_threshold_floor_above_threshold_is_refused() -> None:
    message = agreement_error(edited(set_key("matching.threshold_floor", 0.9), before_decision()))
    assert message == "matching.threshold_floor: 0.9 must not exceed matching.threshold 0.85"
    with pytest.raises(AgreementError, match="^matching.decision.threshold_floor: 0.81 must"):
        document(threshold=0.8, threshold_floor=0.81)
    assert agreement_from_document(document(threshold=0.8, threshold_floor=0.8))


@pytest.mark.parametrize("valid_until", ["2026-03-01T11:59:59Z", "2026-03-01T12:00:00Z"])
def test_validity_window_must_not_be_empty(valid_until: str) -> None:
    message = agreement_error(edited(set_key("limits.valid_until", valid_until)))
    assert message.startswith("limits.valid_from")
    assert "limits.valid_until" in message


@pytest.mark.parametrize(
    ("field", "words"),
    [("public_key", "same public key"), ("certificate_sha256", "same certificate")],
)
def test_both_parties_with_the_same_identity_are_refused(field: str, words: str) -> None:
    def same(doc: Document) -> None:
        doc["parties"]["requester"].setdefault(field, public_key_text(KEYS["requester"]))
        doc["parties"]["custodian"][field] = doc["parties"]["requester"][field]

    # Only format 1 named separate public keys.
    message = agreement_error(edited(same, before_decision() if field == "public_key" else None))
    assert message.startswith("parties: ")
    assert words in message


@pytest.mark.parametrize(
    "raw",
    [
        b'{"reference": "a", "reference": "b"}',
        canonical_json(document())[:-1] + b',"reference":"again"}',
        canonical_json(document()).replace(b'"matching":{', b'"matching":{"solver":"greedy",', 1),
    ],
)
def test_duplicate_json_keys_are_refused(raw: bytes) -> None:
    message = agreement_error(raw)
    assert "duplicate key" in message
    assert "'reference'" in message or "'solver'" in message


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (canonical_json(document()).replace(b"DSA", b"\xff\xfeDSA"), "UTF-8"),
        (json.dumps(document()).encode("utf-16"), "UTF-8"),
        (b"", "not valid UTF-8 JSON"),
        (b"reference: DSA-2026-017", "not valid UTF-8 JSON"),
        (canonical_json(document())[:-1], "not valid UTF-8 JSON"),
    ],
)
def test_bytes_that_are_not_utf8_json_are_refused(raw: bytes, words: str) -> None:
    message = agreement_error(raw)
    assert message.startswith("agreement is not valid UTF-8 JSON")
    assert words in message


@pytest.mark.parametrize("raw", [b"[]", b'"agreement"', b"null", b"1"])
def test_json_that_is_not_an_object_is_refused(raw: bytes) -> None:
    assert agreement_error(raw).startswith("agreement: must be a JSON object, not ")


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b'{"reference": NaN}', "reference: NaN is not a JSON number"),
        (b'{"reference": Infinity}', "reference: Infinity is not a JSON number"),
        (
            canonical_json(document()).replace(b'"bit_length":1024', b'"bit_length":-Infinity'),
            "encoding.bit_length: -Infinity is not a JSON number",
        ),
        (
            canonical_json(document()).replace(b'"bounds":[0.6,', b'"bounds":[NaN,'),
            "matching.decision.bounds[0]: NaN is not a JSON number",
        ),
        (
            canonical_json(before_decision()).replace(b'"threshold":0.85', b'"threshold":NaN'),
            "matching.threshold: NaN is not a JSON number",
        ),
        (
            canonical_json(document()).replace(b"DSA", b"\\ud800DSA"),
            "reference: the text holds a lone surrogate",
        ),
        (
            canonical_json(document()).replace(b'"name":"custodian', b'"\\udc00":1,"name":"c'),
            "parties.custodian: the text holds a lone surrogate",
        ),
    ],
)
def test_numbers_without_json_form_and_lone_surrogates_are_refused_naming_the_key(
    raw: bytes, words: str
) -> None:
    assert agreement_error(raw).startswith(words)


@pytest.mark.parametrize(
    ("settings", "where"),
    [
        ({"threshold_bounds": (float("nan"), 0.9)}, "matching.decision.bounds[0]"),
        ({"fallback_threshold": float("inf")}, "matching.decision.fallback_threshold"),
        ({"threshold": 0.6, "threshold_floor": float("nan")}, "matching.decision.threshold_floor"),
        ({"possible_matches": (0.1, float("nan"))}, "matching.possible_matches[1]"),
        ({"reference": "case \ud800"}, "reference"),
    ],
)
def test_new_agreement_document_refuses_nan_infinities_and_lone_surrogates(
    settings: dict[str, Any], where: str
) -> None:
    with pytest.raises(AgreementError, match=f"^{re.escape(where)}: "):
        document(**settings)


def test_new_agreement_document_refuses_invalid_settings() -> None:
    with pytest.raises(AgreementError, match="^release.requester: "):
        document(requester_release="all")
    with pytest.raises(AgreementError, match="^matching.decision.threshold: "):
        document(threshold=0)
    with pytest.raises(AgreementError, match="^parties: .*same certificate"):
        new_agreement_document(
            reference="x",
            requester=party("requester"),
            custodian=PartyInfo("c", CERTS["requester"]),
            schema_sha256=SCHEMA_HASH,
            bit_length=1024,
        )


# --- batch purpose ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "section"),
    [
        ({}, None),
        ({"require_purpose": True}, {"max_length": 200}),
        ({"purpose_max_length": 40}, {"max_length": 40}),
        ({"allowed_purposes": ("audit", "fraud")}, {"allowed": ["audit", "fraud"]}),
    ],
)
def test_batch_purpose_is_absent_unless_required(
    settings: dict[str, Any], section: dict[str, Any] | None
) -> None:
    written = document(**settings)
    assert written.get("batch_purpose") == section
    agreement = parse_agreement(rfc8785.dumps(written))
    stated = agreement.batch_purpose
    assert (stated and stated.model_dump(exclude_none=True)) == section


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({}, "batch_purpose: 'max_length' is required"),
        ({"max_length": 0}, "batch_purpose.max_length: Input should be greater than or equal"),
        ({"max_length": 10, "allowed": ["a"]}, "batch_purpose: give either max_length"),
        ({"allowed": []}, "batch_purpose.allowed: List should have at least 1 item"),
        ({"allowed": ["a", "b", "a"]}, "batch_purpose.allowed[2]: is listed twice"),
        ({"allowed": ["a", "b\tc"]}, "batch_purpose.allowed[1]: character 2 is a control"),
        ({"allowed": [" "]}, "batch_purpose.allowed[0]: is blank"),
        ({"max_length": 10, "required": True}, "batch_purpose: 'required' is not a known key"),
        (None, "agreement: 'batch_purpose' is null; leave it out instead"),
    ],
)
def test_invalid_batch_purpose_is_refused_naming_its_key(
    section: dict[str, Any] | None, words: str
) -> None:
    assert agreement_error(edited(set_key("batch_purpose", section))).startswith(words)


def test_a_format_1_agreement_has_no_batch_purpose() -> None:
    written = json.loads(FORMAT_1_SIGNED.read_bytes())["agreement"]
    written["batch_purpose"] = {"max_length": 200}
    assert agreement_error(json.dumps(written).encode()).startswith(
        "batch_purpose: format-1 agreements have none"
    )


def test_new_agreement_document_refuses_purpose_settings_without_a_purpose() -> None:
    with pytest.raises(AgreementError, match="^batch_purpose: a maximum length"):
        document(require_purpose=False, purpose_max_length=20)


# --- signatures ------------------------------------------------------------------------------


def test_both_signatures_are_accepted() -> None:
    signed = signed_by()
    assert signed.problems() == []
    assert set(signed.signatures) == set(ROLES)
    assert signed.certificates == {role: CERT_PEMS[role].decode() for role in ROLES}
    for role in ROLES:
        cert = x509.load_pem_x509_certificate(CERT_PEMS[role])
        data = SIGNING_CONTEXT + signed.agreement.canonical_bytes
        assert signed_by_certificate(cert, data, signed.signatures[role])


def test_sign_as_keeps_earlier_signatures_and_the_agreement() -> None:
    unsigned = SignedAgreement(agreement_from_document(document()), {})
    once = sign_as(unsigned, "custodian", CERT_PEMS["custodian"], KEYS["custodian"])
    twice = sign_as(once, "requester", CERT_PEMS["requester"], KEYS["requester"])
    assert unsigned.signatures == {}
    assert set(once.signatures) == set(once.certificates) == {"custodian"}
    assert twice.signatures["custodian"] == once.signatures["custodian"]
    assert twice.agreement is unsigned.agreement


@pytest.mark.parametrize(
    ("role", "cert", "key", "message"),
    [
        ("requester", "custodian", "custodian", "not the requester's certificate"),
        ("custodian", "requester", "requester", "not the custodian's certificate"),
        ("requester", "requester", "custodian", "not the private key of this certificate"),
    ],
)
def test_sign_as_refuses_a_certificate_the_agreement_does_not_name_for_the_role(
    role: str, cert: str, key: str, message: str
) -> None:
    unsigned = SignedAgreement(agreement_from_document(document()), {})
    with pytest.raises(AgreementError, match=message):
        sign_as(unsigned, role, CERT_PEMS[cert], KEYS[key])


def test_sign_as_keeps_only_the_certificates_of_a_pem_file() -> None:
    """A PEM file may hold other text, such as the attributes an export wrote before it."""
    pem = "Bag Attributes\n    friendlyName: Agència\n".encode() + CERT_PEMS["custodian"]
    unsigned = SignedAgreement(agreement_from_document(document()), {})
    signed = sign_as(unsigned, "custodian", pem, KEYS["custodian"])
    assert signed.certificates == {"custodian": CERT_PEMS["custodian"].decode()}


def test_sign_as_refuses_an_agreement_with_separate_signing_keys() -> None:
    unsigned = parse_signed(BEFORE_DECISION.read_bytes())
    with pytest.raises(AgreementError, match="names a separate signing key for the requester"):
        sign_as(unsigned, "requester", CERT_PEMS["requester"], KEYS["requester"])


@pytest.mark.parametrize("role", ["operator", "Requester", ""])
def test_sign_as_refuses_an_unknown_role(role: str) -> None:
    unsigned = SignedAgreement(agreement_from_document(document()), {})
    with pytest.raises(AgreementError, match="unknown role"):
        sign_as(unsigned, role, CERT_PEMS["requester"], KEYS["requester"])


@pytest.mark.parametrize(
    ("signers", "missing"),
    [
        (("requester",), ["custodian"]),
        (("custodian",), ["requester"]),
        ((), ["requester", "custodian"]),
    ],
)
def test_problems_reports_a_missing_signature(signers: tuple[str, ...], missing: list[str]) -> None:
    assert signed_by(signers).problems() == [f"the {role} has not signed" for role in missing]


def test_problems_reports_a_signature_by_the_wrong_partys_key() -> None:
    signed = signed_by()
    swapped = SignedAgreement(
        signed.agreement,
        {
            "requester": sign_with_key(KEYS["custodian"], signed.signed_bytes),
            "custodian": signed.signatures["custodian"],
        },
        signed.certificates,
    )
    assert swapped.problems() == [
        "the requester's signature is not made with the key of the requester's certificate "
        "over these agreement bytes"
    ]
    both_swapped = SignedAgreement(
        signed.agreement,
        {"requester": signed.signatures["custodian"], "custodian": signed.signatures["requester"]},
        signed.certificates,
    )
    assert len(both_swapped.problems()) == 2


def test_problems_refuses_a_signature_without_the_signing_context() -> None:
    """A signature by the certificate's key over other bytes (here the bare agreement, as a
    signature made for another purpose might be) is not an agreement signature."""
    signed = signed_by()
    bare = sign_with_key(KEYS["custodian"], signed.agreement.canonical_bytes)
    changed = SignedAgreement(
        signed.agreement, {**signed.signatures, "custodian": bare}, signed.certificates
    )
    assert [p.split("'s")[0] for p in changed.problems()] == ["the custodian"]


@pytest.mark.parametrize(
    ("certificate", "problem"),
    [
        (None, "the custodian's certificate is missing (the custodian adds it when signing)"),
        ("not a certificate", "the custodian's certificate is not a PEM certificate"),
        ("\ud800", "the custodian's certificate is not a PEM certificate"),
        (
            CERT_PEMS["requester"].decode(),
            "the custodian's certificate is not the one the agreement names for the custodian",
        ),
    ],
)
def test_problems_reports_a_certificate_that_is_not_the_named_one(
    certificate: str | None, problem: str
) -> None:
    signed = signed_by()
    certificates = {"requester": signed.certificates["requester"]}
    if certificate is not None:
        certificates["custodian"] = certificate
    changed = SignedAgreement(signed.agreement, signed.signatures, certificates)
    assert changed.problems() == [problem]


def test_problems_refuses_agreements_with_separate_signing_keys() -> None:
    """Agreements written before parties signed with their certificate's key name an Ed25519
    key beside each certificate: nothing binds it to the certificate's holder."""
    doc = before_decision()  # format 1: the only format with separate signing keys
    for role in ROLES:
        doc["parties"][role]["public_key"] = public_key_text(KEYS[role])
    agreement = agreement_from_document(doc)
    signatures = {role: sign(KEYS[role], agreement.canonical_bytes) for role in ROLES}
    problems = SignedAgreement(agreement, signatures).problems()
    assert problems[:2] == [
        f"the {role}'s signing key (parties.{role}.public_key) is not bound to the {role}'s "
        "certificate"
        for role in ROLES
    ]
    assert problems[2].startswith("agreements that name separate signing keys")


def test_problems_with_a_client_ca_checks_who_issued_each_certificate(
    identities: Identities,
) -> None:
    pki = identities.pki
    doc = new_agreement_document(
        reference="issued",
        requester=PartyInfo(
            "r", certificate_fingerprint(pki.party_certs["requester"].read_bytes())
        ),
        custodian=PartyInfo(
            "c", certificate_fingerprint(pki.party_certs["custodian"].read_bytes())
        ),
        schema_sha256=SCHEMA_HASH,
        bit_length=1024,
    )
    signed = SignedAgreement(agreement_from_document(doc), {})
    for role in ROLES:
        signed = identities.sign(signed, role)
    assert signed.problems(pki.ca_cert.read_bytes()) == []
    assert signed_by().problems() == []
    self_signed = signed_by().problems(pki.ca_cert.read_bytes())
    assert [p.split(":")[0] for p in self_signed] == [
        f"the {role}'s certificate is not a client certificate of this CA" for role in ROLES
    ]


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()),
        Ed25519PrivateKey.generate(),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
    ids=["ecdsa", "ed25519", "rsa"],
)
def test_certificate_keys_of_each_kind_sign(key: PrivateKey) -> None:
    pem = certificate(key, "custodian")
    doc = document()
    doc["parties"]["custodian"]["certificate_sha256"] = certificate_fingerprint(pem)
    signed = signed_by(("requester",), doc)
    signed = sign_as(signed, "custodian", pem, key)
    assert signed.problems() == []
    other = sign_with_key(key, b"other bytes")
    forged = SignedAgreement(
        signed.agreement, {**signed.signatures, "custodian": other}, signed.certificates
    )
    assert len(forged.problems()) == 1


@pytest.mark.parametrize("signature", ["", "not base64!", "AAAA", "a" * 88])
def test_problems_reports_a_malformed_signature(signature: str) -> None:
    signed = signed_by()
    broken = SignedAgreement(
        signed.agreement, {**signed.signatures, "custodian": signature}, signed.certificates
    )
    assert broken.problems() == [
        "the custodian's signature is not made with the key of the custodian's certificate "
        "over these agreement bytes"
    ]


@pytest.mark.parametrize(
    "path, value",
    [
        ("matching.decision.fallback_threshold", 0.7),
        ("release.custodian", "pairs"),
        ("reference", "DSA-2026-017 "),
        ("limits.valid_until", "2099-01-01T00:00:00Z"),
    ],
)
def test_problems_reports_both_signatures_after_the_agreement_changed(
    path: str, value: Any
) -> None:
    outer = envelope(signed_by())
    set_key(path, value)(outer["agreement"])
    changed = parse_signed(json.dumps(outer).encode())
    problems = changed.problems()
    assert [p.split("'s signature")[0] for p in problems] == ["the requester", "the custodian"]
    assert all("is not made with the key" in p for p in problems)


def test_parse_signed_accepts_an_envelope() -> None:
    signed = signed_by()
    parsed = parse_signed(json.dumps(envelope(signed), indent=2).encode())
    assert parsed.signatures == signed.signatures
    assert parsed.agreement.project_id == signed.agreement.project_id
    assert parsed.problems() == []


def test_parse_signed_accepts_a_bare_agreement_without_signatures() -> None:
    doc = document()
    parsed = parse_signed(canonical_json(doc))
    assert parsed.signatures == {}
    assert parsed.agreement.document == doc
    assert parsed.problems() == ["the requester has not signed", "the custodian has not signed"]


def test_parse_signed_accepts_an_envelope_with_one_or_no_signatures() -> None:
    outer = envelope(signed_by(("custodian",)))
    assert set(parse_signed(json.dumps(outer).encode()).signatures) == {"custodian"}
    outer["signatures"] = {}
    assert parse_signed(json.dumps(outer).encode()).signatures == {}


@pytest.mark.parametrize(
    "signatures",
    [
        ["sig", "sig"],
        "sig",
        None,
        {"operator": "sig"},
        {"requester": "sig", "server": "sig"},
        {"requester": 1},
        {"custodian": None},
        {"requester": ["sig"]},
    ],
)
def test_parse_signed_refuses_malformed_signatures(signatures: Any) -> None:
    outer = envelope(signed_by())
    outer["signatures"] = signatures
    with pytest.raises(AgreementError, match="^signatures must map a role"):
        parse_signed(json.dumps(outer).encode())


def test_parse_signed_refuses_an_invalid_agreement_inside_an_envelope() -> None:
    outer = envelope(signed_by())
    outer["agreement"]["matching"]["decision"]["fallback_threshold"] = 2
    with pytest.raises(AgreementError, match="^matching.decision.fallback_threshold: "):
        parse_signed(json.dumps(outer).encode())


@pytest.mark.parametrize(
    "raw",
    [
        b'{"agreement": {}, "signatures": {}, "agreement": {}}',
        b"\xff",
        b"{",
    ],
)
def test_parse_signed_refuses_bytes_that_are_not_strict_json(raw: bytes) -> None:
    with pytest.raises(AgreementError, match="^signed agreement is not valid UTF-8 JSON"):
        parse_signed(raw)


def test_parse_signed_refuses_an_envelope_with_extra_keys() -> None:
    outer = envelope(signed_by())
    outer["comment"] = "please sign"
    with pytest.raises(AgreementError, match="^a signed agreement has only the keys"):
        parse_signed(json.dumps(outer).encode())


def test_to_bytes_round_trips_through_parse_signed() -> None:
    signed = signed_by()
    raw = signed.to_bytes()
    parsed = parse_signed(raw)
    assert parsed == signed
    assert isinstance(parsed.agreement, Agreement)
    assert parsed.to_bytes() == raw
    assert raw == canonical_json(json.loads(raw))
    assert json.loads(raw) == {
        "agreement": signed.agreement.document,
        "signatures": signed.signatures,
        "certificates": signed.certificates,
    }
