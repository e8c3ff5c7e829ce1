"""Agreement documents: strict parsing, canonical bytes and the project ID."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from blindlink.agreement.model import ReleaseKind, new_agreement_document, parse_agreement
from blindlink.canonical import canonical_json
from blindlink.errors import AgreementError

SCHEMA_HASH = hashlib.sha256(b"a linkage schema").hexdigest()
Document = dict[str, Any]


def document(**changes: Any) -> Document:
    """A valid agreement document; keyword arguments replace new_agreement_document's."""
    settings: dict[str, Any] = {
        "reference": "DSA-2026-017",
        "requester": "Requesting agency",
        "custodian": "Custodian agency",
        "schema_sha256": SCHEMA_HASH,
        "bit_length": 1024,
        "threshold": 0.8,
        "requester_release": "own_rows",
        "custodian_release": "count",
        "max_records_per_upload": 50_000,
    }
    settings.update(changes)
    return new_agreement_document(**settings)


def edited(edit: Callable[[Document], None]) -> bytes:
    doc = copy.deepcopy(document())
    edit(doc)
    return json.dumps(doc).encode()


def agreement_error(raw: bytes) -> str:
    with pytest.raises(AgreementError) as info:
        parse_agreement(raw)
    return str(info.value)


# --- valid documents -------------------------------------------------------------------------


def test_valid_document_round_trips() -> None:
    doc = document()
    agreement = parse_agreement(canonical_json(doc))
    assert agreement.reference == "DSA-2026-017"
    assert agreement.party_names == {
        "requester": "Requesting agency",
        "custodian": "Custodian agency",
    }
    assert agreement.schema_sha256 == SCHEMA_HASH
    assert agreement.bit_length == 1024
    assert agreement.threshold == 0.8
    assert agreement.release == {"requester": ReleaseKind.OWN_ROWS, "custodian": ReleaseKind.COUNT}
    assert agreement.max_records_per_upload == 50_000
    assert agreement.document == doc
    assert agreement.canonical_bytes == canonical_json(doc)
    assert parse_agreement(agreement.canonical_bytes) == agreement


def test_limits_section_is_optional() -> None:
    raw = edited(lambda d: d.pop("limits"))
    assert parse_agreement(raw).max_records_per_upload == 10_000_000


def test_other_role() -> None:
    agreement = parse_agreement(canonical_json(document()))
    assert agreement.other_role("requester") == "custodian"
    assert agreement.other_role("custodian") == "requester"


def test_project_id_is_sha256_of_canonical_bytes() -> None:
    doc = document()
    agreement = parse_agreement(json.dumps(doc, indent=4).encode())
    assert agreement.project_id == hashlib.sha256(canonical_json(doc)).hexdigest()
    assert canonical_json(doc) == json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def test_project_id_ignores_formatting() -> None:
    doc = document(reference="Überprüfung 2026/17", custodian="Ærø Sundhed")
    expected = parse_agreement(canonical_json(doc)).project_id
    variants = [
        json.dumps(doc),
        json.dumps(doc, indent=2),
        json.dumps(doc, indent="\t", ensure_ascii=True),
        json.dumps(dict(reversed(list(doc.items()))), separators=(" , ", " : ")),
        "\n\n  " + json.dumps(doc, sort_keys=True) + "  \n",
    ]
    for text in variants:
        assert parse_agreement(text.encode("utf-8")).project_id == expected


def test_project_id_changes_with_the_reference() -> None:
    first = parse_agreement(canonical_json(document(reference="DSA-2026-017"))).project_id
    second = parse_agreement(canonical_json(document(reference="DSA-2026-018"))).project_id
    assert first != second


def test_project_id_changes_with_any_setting() -> None:
    base = parse_agreement(canonical_json(document())).project_id
    for change in (
        {"threshold": 0.85},
        {"custodian_release": "nothing"},
        {"bit_length": 2048},
        {"max_records_per_upload": 50_001},
        {"requester": "Another agency"},
    ):
        assert parse_agreement(canonical_json(document(**change))).project_id != base


# --- unknown and missing keys ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d.update(notes="x"),
            "agreement: unknown key 'notes' (allowed: blindlink_agreement, encoding, limits, "
            "matching, parties, reference, release)",
        ),
        (
            lambda d: d["parties"].update(auditor={"name": "x"}),
            "parties: unknown key 'auditor' (allowed: custodian, requester)",
        ),
        (
            lambda d: d["parties"]["requester"].update(email="x@example.org"),
            "parties.requester: unknown key 'email' (allowed: name)",
        ),
        (
            lambda d: d["parties"]["custodian"].update(nmae="x"),
            "parties.custodian: unknown key 'nmae' (allowed: name)",
        ),
        (
            lambda d: d["encoding"].update(xor_folds=1),
            "encoding: unknown key 'xor_folds' (allowed: bit_length, schema_sha256)",
        ),
        (
            lambda d: d["matching"].update(tresh=0.9),
            "matching: unknown key 'tresh' (allowed: threshold)",
        ),
        (
            lambda d: d["release"].update(server="pairs"),
            "release: unknown key 'server' (allowed: custodian, requester)",
        ),
        (
            lambda d: d["limits"].update(max_records=5),
            "limits: unknown key 'max_records' (allowed: max_records_per_upload)",
        ),
    ],
    ids=[
        "top",
        "parties",
        "requester",
        "custodian",
        "encoding",
        "matching",
        "release",
        "limits",
    ],
)
def test_unknown_key_is_rejected(edit: Callable[[Document], None], expected: str) -> None:
    assert agreement_error(edited(edit)) == expected


@pytest.mark.parametrize("role", ["requester", "custodian"])
def test_missing_party(role: str) -> None:
    raw = edited(lambda d: d["parties"].pop(role))
    assert agreement_error(raw) == f"parties: missing key '{role}'"


def test_missing_party_name() -> None:
    raw = edited(lambda d: d["parties"]["custodian"].pop("name"))
    assert agreement_error(raw) == "parties.custodian: missing key 'name'"


@pytest.mark.parametrize("section", ["parties", "encoding", "matching", "release"])
def test_missing_section(section: str) -> None:
    raw = edited(lambda d: d.pop(section))
    assert agreement_error(raw) == f"{section} must be a JSON object"


def test_missing_format_version() -> None:
    raw = edited(lambda d: d.pop("blindlink_agreement"))
    assert agreement_error(raw) == "agreement.blindlink_agreement must be 1"


@pytest.mark.parametrize("version", [2, "1", True])
def test_wrong_format_version(version: Any) -> None:
    # JSON true is not the number 1, even though Python's True == 1.
    raw = edited(lambda d: d.update(blindlink_agreement=version))
    assert agreement_error(raw) == "agreement.blindlink_agreement must be 1"


def test_duplicate_keys_are_rejected() -> None:
    # A reader of the file sees the first "custodian" release; json.loads keeps the last.
    raw = canonical_json(document()).replace(
        b'"custodian":"count"', b'"custodian":"count","custodian":"pairs"'
    )
    assert raw.count(b'"custodian":"') == 2
    message = agreement_error(raw)
    assert "custodian" in message
    assert "duplicate" in message.lower()


# --- invalid values ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["requester", "custodian"])
@pytest.mark.parametrize("kind", ["everything", "OWN_ROWS", "", None, 1])
def test_bad_release_kind(role: str, kind: Any) -> None:
    raw = edited(lambda d: d["release"].update({role: kind}))
    assert agreement_error(raw) == f"release.{role} must be one of own_rows, pairs, count, nothing"


@pytest.mark.parametrize("threshold", [0, 0.0, -0.5, 1.5, 1.0000001, "0.8", True, False, None])
def test_bad_threshold(threshold: Any) -> None:
    raw = edited(lambda d: d["matching"].update(threshold=threshold))
    assert agreement_error(raw) == "matching.threshold must be a number in (0, 1]"


def test_non_finite_threshold() -> None:
    for token in (b"NaN", b"Infinity"):
        raw = canonical_json(document()).replace(b'"threshold":0.8', b'"threshold":' + token)
        assert agreement_error(raw) == "matching.threshold must be a number in (0, 1]"


@pytest.mark.parametrize("threshold", [1, 1.0, 0.5, 1e-9])
def test_threshold_bounds_accepted(threshold: float) -> None:
    raw = edited(lambda d: d["matching"].update(threshold=threshold))
    assert parse_agreement(raw).threshold == threshold


def test_new_agreement_document_validates() -> None:
    with pytest.raises(AgreementError, match=r"matching\.threshold must be a number in \(0, 1\]"):
        document(threshold=0)
    with pytest.raises(AgreementError, match="release.custodian must be one of"):
        document(custodian_release="all")


@pytest.mark.parametrize("bits", [1001, 1020, 1004])
def test_bit_length_not_a_multiple_of_8(bits: int) -> None:
    raw = edited(lambda d: d["encoding"].update(bit_length=bits))
    assert agreement_error(raw) == "encoding.bit_length must be a multiple of 8, at most 65536"


def test_bit_length_too_large() -> None:
    raw = edited(lambda d: d["encoding"].update(bit_length=65544))
    assert agreement_error(raw) == "encoding.bit_length must be a multiple of 8, at most 65536"


@pytest.mark.parametrize("bits", [0, -8, 1024.0, "1024", True])
def test_bit_length_not_a_positive_integer(bits: Any) -> None:
    raw = edited(lambda d: d["encoding"].update(bit_length=bits))
    assert agreement_error(raw) == "encoding.bit_length must be a positive integer"


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        SCHEMA_HASH[:-1],
        SCHEMA_HASH + "0",
        SCHEMA_HASH.upper(),
        "g" * 64,
        SCHEMA_HASH + "\n",
        " " + SCHEMA_HASH[1:],
        "",
        None,
    ],
)
def test_schema_hash_must_be_64_lowercase_hex(value: Any) -> None:
    raw = edited(lambda d: d["encoding"].update(schema_sha256=value))
    assert agreement_error(raw).startswith("encoding.schema_sha256 must be 64 lowercase hex digits")


@pytest.mark.parametrize("reference", ["", "   ", "x" * 201, 17, None])
def test_bad_reference(reference: Any) -> None:
    raw = edited(lambda d: d.update(reference=reference))
    assert agreement_error(raw) == (
        "agreement.reference must be a non-empty string (at most 200 characters)"
    )


@pytest.mark.parametrize("limit", [0, -1, 2.5, "100"])
def test_bad_record_limit(limit: Any) -> None:
    raw = edited(lambda d: d["limits"].update(max_records_per_upload=limit))
    assert agreement_error(raw) == "limits.max_records_per_upload must be a positive integer"


# --- not a document ----------------------------------------------------------------------------


def test_non_utf8_bytes() -> None:
    raw = json.dumps(document(reference="M\u00fcller"), ensure_ascii=False).encode("latin-1")
    assert b"M\xfcller" in raw
    message = agreement_error(raw)
    assert message.startswith("agreement is not UTF-8 JSON: ")
    assert "utf-8" in message.lower()


@pytest.mark.parametrize(
    "raw", [b"", b"reference: DSA-2026-017\n", b'{"blindlink_agreement": 1,}', b"{"]
)
def test_not_json(raw: bytes) -> None:
    assert agreement_error(raw).startswith("agreement is not UTF-8 JSON: ")


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"agreement"', b"null"])
def test_json_that_is_not_an_object(raw: bytes) -> None:
    assert agreement_error(raw) == "agreement must be a JSON object"
