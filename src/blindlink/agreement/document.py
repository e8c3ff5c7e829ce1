"""The agreement document as one model: its fields, their defaults, its validation, its JSON
Schema (generated: `agreement_json_schema`) and its canonical bytes.

Format 2 (FORMAT_VERSION) documents are canonicalised by RFC 8785 (JSON Canonicalization Scheme),
so anyone can recompute a project ID, the SHA-256 of those bytes, with a standard JCS library.
A document states every field: the defaults fill what a new agreement leaves out
(`new_document`), never what a document read from bytes lacks, so what is signed is what is read.

Format 1 documents (written before format 2) still load: they are read into the same model, and
keep the canonical bytes they were signed over (`canonical_json`: sorted keys, no whitespace,
Python's number forms such as `0.0`), so their signatures and project IDs stay valid.
"""

from __future__ import annotations

import copy
import json
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, get_args

import rfc8785
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, SkipJsonSchema
from pydantic_core import ErrorDetails, PydanticCustomError, core_schema

from blindlink.canonical import canonical_json, reject_duplicate_keys
from blindlink.errors import AgreementError
from blindlink.hardening.steps import KINDS, HardeningError, validate_steps
from blindlink.matching.rules import Target

FORMAT_VERSION: Final = 2
FORMATS = (1, 2)
ROLES = ("requester", "custodian")
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
VALIDITY = timedelta(days=365)
PURPOSE_MAX_LENGTH = 200  # characters of a batch's free-text purpose, unless agreed otherwise
# The tradeoff benchmark's recommendation (benchmarks/results/tradeoff.md): F* 0.958 with the
# worst re-identification at 1.2%.
RECOMMENDED_HARDENING: list[dict[str, Any]] = [{"kind": "diffusion", "t": 3}]


# --- the decision rule's defaults ------------------------------------------------------------


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


def recommended_thresholds(hardening: list[dict[str, Any]]) -> ThresholdRange:
    """The measured threshold range for these hardening steps, with default bounds and fallback.

    From benchmarks/results/tradeoff.md (calibrated thresholds, generated data): 0.54-0.64 for
    the hardened configurations with diffusion, xor folding or rule 90; 0.63-0.75 with
    randomized response; 0.68-0.89 for unhardened ones, balancing and salting included.
    Hardened encodings are less similar, so their thresholds lie lower.
    """
    kinds = {step.get("kind") for step in hardening if isinstance(step, dict)}
    if kinds & {"diffusion", "xor_fold", "rule90"}:
        return ThresholdRange((0.54, 0.64), (0.5, 0.9), 0.6, "diffusion, xor folding or rule 90")
    if "randomized_response" in kinds:
        return ThresholdRange((0.63, 0.75), (0.5, 0.9), 0.6, "randomized response")
    return ThresholdRange((0.68, 0.89), (0.6, 0.95), 0.8, "no hardening, balancing or salting")


# --- field types -----------------------------------------------------------------------------


def refusal(message: str, key: str = "") -> PydanticCustomError:
    """A refusal raised inside the model: `message`, about the sub-key `key` (".name" or "[i]"
    below the place the validator checks) when it is not the place itself."""
    return PydanticCustomError("agreement", "{message}", {"message": message, "key": key})


def _utc_time(text: str) -> str:
    try:
        datetime.strptime(text, TIMESTAMP_FORMAT)
    except ValueError:
        raise refusal(f"{text!r} is not a UTC time like 2026-12-01T00:00:00Z") from None
    return text


def _valid_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    try:
        validate_steps(steps)
    except HardeningError as exc:
        where, _, message = str(exc).partition(": ")
        raise refusal(message, where.removeprefix("hardening")) from None
    return steps


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=1, le=10**12)]
DiceThreshold = Annotated[float, Field(gt=0, le=1, description="a Dice similarity in (0, 1]")]
Probability = Annotated[float, Field(ge=0, le=1)]
Timestamp = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$",
        description="UTC, e.g. 2026-12-01T00:00:00Z",
    ),
    AfterValidator(_utc_time),
]
Bounds = Annotated[list[DiceThreshold], Field(min_length=2, max_length=2)]
Band = Annotated[list[Probability], Field(min_length=2, max_length=2)]
HardeningStep = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {
            "type": "object",
            "required": ["kind"],
            "properties": {"kind": {"enum": list(KINDS)}},
        }
    ),
]


class _Section(BaseModel):
    # Strict: "1024" is not a number, 1024.0 not an integer, 1 not a boolean.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# --- the document ----------------------------------------------------------------------------


class PartySection(_Section):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    certificate_sha256: Annotated[
        Sha256,
        Field(
            description="SHA-256 of the party's TLS client certificate (DER); the server "
            "identifies the party by it, and the party signs the agreement with its key"
        ),
    ]


class Parties(_Section):
    requester: PartySection
    custodian: PartySection

    @model_validator(mode="after")
    def _distinct(self) -> Parties:
        if self.requester.certificate_sha256 == self.custodian.certificate_sha256:
            raise refusal("the requester and the custodian have the same certificate")
        return self


class Encoding(_Section):
    schema_sha256: Annotated[
        Sha256,
        Field(description="content hash of the clkhash linkage schema (blindlink schema hash)"),
    ]
    bit_length: Annotated[
        int,
        Field(
            ge=8,
            le=65536,
            multiple_of=8,
            description="bits per uploaded encoding: the schema's length after every hardening "
            "step",
        ),
    ]
    hardening: Annotated[
        list[HardeningStep],
        Field(
            max_length=8,
            description="steps both parties apply to their encodings, in order (salt first): "
            "xor_fold {folds}, balance, rule90, randomized_response {p}, diffusion {t}, salt "
            "{field, part: year|value}. Default: the tradeoff benchmark's recommendation",
            json_schema_extra={"default": RECOMMENDED_HARDENING},
        ),
        AfterValidator(_valid_steps),
    ] = Field(default_factory=lambda: copy.deepcopy(RECOMMENDED_HARDENING))


class FixedDecision(_Section):
    """rule fixed: a Dice threshold; a requester batch may ask for another, never below
    threshold_floor."""

    rule: Literal["fixed"]
    threshold: Annotated[
        DiceThreshold, Field(description="Dice threshold of a run unless its request names another")
    ]
    threshold_floor: Annotated[
        DiceThreshold,
        Field(
            description="no run may use a lower threshold; at most threshold. Default: threshold"
        ),
    ]

    @model_validator(mode="before")
    @classmethod
    def _floor_defaults_to_the_threshold(cls, data: Any) -> Any:
        if isinstance(data, dict) and "threshold_floor" not in data and "threshold" in data:
            return {**data, "threshold_floor": data["threshold"]}
        return data

    @model_validator(mode="after")
    def _floor_at_most_threshold(self) -> FixedDecision:
        if self.threshold_floor > self.threshold:
            raise refusal(
                f"{self.threshold_floor:g} must not exceed matching.decision.threshold "
                f"{self.threshold:g}",
                ".threshold_floor",
            )
        return self


class CalibratedDecision(_Section):
    """rule calibrated: each run's match model, fitted to the run's own scores, chooses the
    threshold within bounds [low, high] towards target (best_f_star: the best estimated F*;
    min_precision: the lowest threshold whose estimated precision reaches min_precision, else
    high), never one that releases a pair of match probability below 0.5
    (decision.LEAST_PROBABILITY); a run whose model cannot be fitted uses fallback_threshold,
    raised where the model finds few matches (decision._fallback). Bounds and fallback
    default to those recommended for the hardening."""

    rule: Literal["calibrated"]
    target: Annotated[
        Target, Strict(False), Field(description="what the run's threshold aims for")
    ] = Target.BEST_F_STAR
    min_precision: (
        Annotated[
            float,
            Field(
                gt=0,
                le=1,
                description="the estimated precision a min_precision target must reach: required "
                "with that target, absent with best_f_star",
            ),
        ]
        | SkipJsonSchema[None]
    ) = None
    bounds: Annotated[
        Bounds,
        Field(
            description="[low, high], low <= high: the lowest and highest threshold a run may "
            "choose"
        ),
    ]
    fallback_threshold: Annotated[
        DiceThreshold,
        Field(
            description="the threshold of a run whose match model cannot be fitted; within "
            "bounds. Where the model finds too few matches, the run raises it (up to the upper "
            "bound) above the scores its records without a partner are expected to reach"
        ),
    ]

    @model_validator(mode="after")
    def _consistent(self) -> CalibratedDecision:
        wants_minimum = self.target is Target.MIN_PRECISION
        if wants_minimum and self.min_precision is None:
            raise refusal(
                "the target min_precision needs the minimum estimated precision, in (0, 1]",
                ".min_precision",
            )
        if not wants_minimum and self.min_precision is not None:
            raise refusal(
                "only the target min_precision takes a minimum precision; this rule's target "
                f"is {self.target.value}",
                ".min_precision",
            )
        low, high = self.bounds
        if low > high:
            raise refusal(f"the lower bound {low:g} exceeds the upper bound {high:g}", ".bounds")
        if not low <= self.fallback_threshold <= high:
            raise refusal(
                f"{self.fallback_threshold:g} is outside the bounds [{low:g}, {high:g}]",
                ".fallback_threshold",
            )
        return self


Decision = Annotated[
    FixedDecision | CalibratedDecision,
    Field(
        discriminator="rule",
        description="how a run decides which pairs (after 1:1 solving) are matches. Default: "
        "calibrated, with the bounds and fallback recommended for the hardening",
    ),
]


class NoBlockingSection(_Section):
    method: Literal["none"]


class LshBlockingSection(_Section):
    method: Literal["lsh"]
    bands: Annotated[int, Field(ge=1, le=1000)]
    bits_per_band: Annotated[int, Field(ge=1, le=64)]
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)]


class KeyField(_Section):
    field: Annotated[str, Field(min_length=1, max_length=100)]
    prefix: Annotated[int, Field(ge=1, le=100)] | SkipJsonSchema[None] = None


class KeyBlockingSection(_Section):
    method: Literal["keys"]
    keys: Annotated[
        list[Annotated[list[KeyField], Field(min_length=1, max_length=8)]],
        Field(
            min_length=1,
            max_length=16,
            description="each key: the fields whose (normalised) values must all agree, each "
            "whole or its first prefix characters",
        ),
    ]


BlockingSection = Annotated[
    NoBlockingSection | LshBlockingSection | KeyBlockingSection,
    Field(
        discriminator="method",
        description="how the server limits comparisons: all pairs; LSH by bit sampling "
        "(records are compared when their bits at bits_per_band public, seeded positions agree "
        "in at least one of bands bands); or keyed blocking keys (records are compared when "
        "they agree on every field of at least one key; each party computes the keys from its "
        "records, HMAC-keyed with the shared secret, so the server sees which records share a "
        "key but not the values)",
    ),
]


class Matching(_Section):
    decision: Decision
    possible_matches: (
        Annotated[
            Band,
            Field(
                description="[low, high), low < high: solved pairs whose match probability "
                "(from the run's match model) lies in this band are possible matches: not "
                "released as matches but counted, and listed as release.possible_matches says; a "
                "match then also needs a probability of at least high. Absent: no band"
            ),
        ]
        | SkipJsonSchema[None]
    ) = None
    blocking: BlockingSection = Field(default_factory=lambda: NoBlockingSection(method="none"))
    solver: Literal["greedy"] = "greedy"
    custodian_duplicates: (
        Annotated[
            bool,
            Field(
                description="the custodian may hold a person more than once: each run sets "
                "aside a requester record's candidates that are, by the run's match model, the "
                "same person as its best candidate (its other records), so that they neither "
                "count as the best non-match the model learns from nor withhold the match as "
                "rivals. Only for custodians that do hold people repeatedly: look-alikes of "
                "different people are set aside too. Absent: false"
            ),
        ]
        | SkipJsonSchema[None]
    ) = None

    @model_validator(mode="after")
    def _band_not_empty(self) -> Matching:
        band = self.possible_matches
        if band is not None and band[0] >= band[1]:
            raise refusal(
                f"the band [{band[0]:g}, {band[1]:g}) is empty; its lower end must be below its "
                "upper end",
                ".possible_matches",
            )
        return self


class ReleaseKind(StrEnum):
    """What one party receives once a run is done."""

    OWN_ROWS = "own_rows"
    PAIRS = "pairs"
    COUNT = "count"
    NOTHING = "nothing"


PossibleRelease = Literal["count", "list"]
POSSIBLE_RELEASES: tuple[str, ...] = get_args(PossibleRelease)


class Release(_Section):
    requester: Annotated[ReleaseKind, Strict(False)] = ReleaseKind.OWN_ROWS
    custodian: Annotated[ReleaseKind, Strict(False)] = ReleaseKind.COUNT
    possible_matches: Annotated[
        PossibleRelease,
        Field(
            description="what a party granted a release receives of a run's possible matches "
            "(matching.possible_matches): count, their number; list, also the possible matches "
            "themselves, apart from its matches and in the form of its own release (own_rows or "
            "pairs). A party whose release is count receives the number, one whose release is "
            "nothing receives nothing. list needs a matching.possible_matches band"
        ),
    ] = "count"
    ambiguity_margin: Annotated[
        Probability,
        Field(
            description="withhold a match when a rival candidate's similarity is within this "
            "margin of it; 0 disables"
        ),
    ] = 0.0
    custodian_approval: Annotated[
        bool,
        Field(
            description="results are fetchable only after the custodian approves the run's counts"
        ),
    ] = False


def now_timestamp() -> str:
    """Now, to the second, as the agreement writes times."""
    return format_timestamp(datetime.now(UTC))


class Limits(_Section):
    max_records_per_upload: Count = 10_000_000
    period_seconds: Annotated[
        Count, Field(description="length of the rolling period of the two limits below")
    ] = 86_400
    max_uploads_per_period: Annotated[Count, Field(description="per party")] = 100
    max_records_per_period: Annotated[Count, Field(description="per party")] = 100_000_000
    valid_from: Annotated[Timestamp, Field(description="default: now")] = Field(
        default_factory=now_timestamp
    )
    valid_until: Annotated[
        Timestamp,
        Field(
            description="after this nothing more is accepted or released. Default: a year "
            "after valid_from"
        ),
    ]

    @model_validator(mode="before")
    @classmethod
    def _valid_for_a_year(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "valid_until" in data:
            return data
        start = data.get("valid_from", now_timestamp())
        try:
            until = parse_timestamp(start, "limits.valid_from") + VALIDITY
        except (AgreementError, TypeError):
            return data  # the field's own validation names the problem
        return {**data, "valid_from": start, "valid_until": format_timestamp(until)}

    @model_validator(mode="after")
    def _window(self) -> Limits:
        if self.valid_from >= self.valid_until:  # same format: text order is time order
            raise refusal(
                "must be before limits.valid_until (the validity window is empty)", ".valid_from"
            )
        return self


class Retention(_Section):
    delete_encodings_after_release: Annotated[
        bool,
        Field(
            description="delete a requester batch's encodings once every party granted a "
            "release has fetched it"
        ),
    ] = True
    encodings_ttl_seconds: Count = 30 * 86_400
    results_ttl_seconds: Count = 30 * 86_400


# Characters that would let a purpose rewrite how an audit line reads: controls, line and
# paragraph separators, bidirectional embeddings, overrides and isolates; and lone surrogates.
_UNPRINTABLE_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}
_BIDI_CONTROLS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def purpose_text_problem(text: str) -> str | None:
    """Why `text` cannot be a batch's purpose (blank, or holding a character that is not
    printable text), or None when it can. Names the character's position, not the text."""
    if not text.strip():
        return "is blank"
    for position, char in enumerate(text, 1):
        category = unicodedata.category(char)
        if category == "Cs":
            return f"character {position} is a lone surrogate (U+{ord(char):04X}), not Unicode text"
        if category in _UNPRINTABLE_CATEGORIES or char in _BIDI_CONTROLS:
            return f"character {position} is a control character (U+{ord(char):04X})"
    return None


def _purpose_text(text: str) -> str:
    problem = purpose_text_problem(text)
    if problem:
        raise refusal(problem)
    return text


def _distinct(values: list[str]) -> list[str]:
    for index, value in enumerate(values):
        if value in values[:index]:
            raise refusal("is listed twice", f"[{index}]")
    return values


PurposeValue = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_purpose_text)]


class BatchPurpose(_Section):
    """Each requester batch declares its purpose or case reference: free text of at most
    max_length characters, or one of the allowed values. The server refuses a batch without
    one and records it in the batch's upload_committed audit entry."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    max_length: (
        Annotated[
            int,
            Field(
                ge=1,
                le=1000,
                description="free text: at most this many characters (Unicode code points). "
                f"Default, unless allowed is given: {PURPOSE_MAX_LENGTH}",
            ),
        ]
        | SkipJsonSchema[None]
    ) = None
    allowed: (
        Annotated[
            list[PurposeValue],
            Field(
                min_length=1,
                max_length=100,
                description="the agreed purposes: a batch's must be one of these, exactly",
                json_schema_extra={"uniqueItems": True},
            ),
            AfterValidator(_distinct),
        ]
        | SkipJsonSchema[None]
    ) = None

    @model_validator(mode="before")
    @classmethod
    def _free_text_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.keys() & {"max_length", "allowed"}:
            return {**data, "max_length": PURPOSE_MAX_LENGTH}
        return data

    @model_validator(mode="after")
    def _one_form(self) -> BatchPurpose:
        if self.max_length is not None and self.allowed is not None:
            raise refusal("give either max_length (free text) or allowed (agreed values), not both")
        return self


class AgreementDocument(_Section):
    """What two parties agree to link and what each may receive."""

    blindlink_agreement: Annotated[
        Literal[2], Field(description="format version: 2, canonical bytes per RFC 8785")
    ] = FORMAT_VERSION
    reference: Annotated[
        str,
        Field(min_length=1, max_length=200, description="the parties' own reference for it"),
    ]
    parties: Parties
    encoding: Encoding
    matching: Annotated[
        Matching,
        Field(
            description="how runs match: the decision rule, an optional possible-match band, "
            "blocking and the 1:1 solver"
        ),
    ]
    release: Release = Field(default_factory=Release)
    limits: Limits = Field(default_factory=lambda: Limits.model_validate({}))
    retention: Retention = Field(default_factory=Retention)
    batch_purpose: (
        Annotated[
            BatchPurpose,
            Field(
                description="each requester batch must declare its purpose or case reference "
                "(free text or an agreed value), which the batch's audit entry records. Absent: "
                "batches carry none"
            ),
        ]
        | SkipJsonSchema[None]
    ) = None

    @model_validator(mode="before")
    @classmethod
    def _decision_defaults(cls, data: Any) -> Any:
        """A calibrated rule unless one is given; bounds and fallback as recommended for the
        hardening (a default fallback moves into given bounds)."""
        if not isinstance(data, dict):
            return data
        matching = data.get("matching", {})
        if not isinstance(matching, dict):
            return data
        decision = matching.get("decision", {"rule": "calibrated"})
        if not (isinstance(decision, dict) and decision.get("rule") == "calibrated"):
            return data
        encoding = data.get("encoding")
        steps = encoding.get("hardening") if isinstance(encoding, dict) else None
        recommended = recommended_thresholds(
            steps if isinstance(steps, list) else RECOMMENDED_HARDENING
        )
        bounds = decision.get("bounds", list(recommended.bounds))
        fallback = recommended.fallback
        if _numbers(bounds, 2):
            fallback = min(max(fallback, bounds[0]), bounds[1])
        decision = {"bounds": bounds, "fallback_threshold": fallback, **decision}
        return {**data, "matching": {**matching, "decision": decision}}

    @model_validator(mode="after")
    def _listed_needs_a_band(self) -> AgreementDocument:
        if self.release.possible_matches == "list" and self.matching.possible_matches is None:
            raise refusal(
                "'list' releases possible matches, but the agreement has no "
                "matching.possible_matches band to find them",
                ".release.possible_matches",
            )
        return self


def _numbers(value: Any, count: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == count
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    )


def default_hardening() -> list[dict[str, Any]]:
    """The hardening a new agreement gets unless it names other steps."""
    steps = Encoding.model_fields["hardening"].get_default(call_default_factory=True)
    return list(steps)


# --- times -----------------------------------------------------------------------------------


def parse_timestamp(text: str, where: str) -> datetime:
    try:
        return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise AgreementError(
            f"{where}: {text!r} is not a UTC time like 2026-12-01T00:00:00Z"
        ) from None


def format_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


# --- reading, checking and canonical bytes ---------------------------------------------------


def load_json(raw: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no duplicate keys. NaN and infinities are read as floats so that
    `check_values` can refuse them by key."""
    try:
        return json.loads(
            raw.decode("utf-8"), object_pairs_hook=reject_duplicate_keys, parse_constant=float
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise AgreementError(f"{what} is not valid UTF-8 JSON: {exc}") from None


def check_values(value: Any, where: str = "agreement") -> None:
    """Refuse, naming the key, what has no canonical JSON form: NaN and infinities (a NaN floor
    would disable the floor, a NaN threshold fail every run) and strings that are not Unicode
    text (a lone surrogate cannot be encoded as UTF-8)."""
    if isinstance(value, float) and not math.isfinite(value):
        written = "NaN" if math.isnan(value) else ("-Infinity" if value < 0 else "Infinity")
        raise AgreementError(f"{where}: {written} is not a JSON number (nor any finite number)")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise AgreementError(f"{where}: the text holds a lone surrogate, not Unicode") from None
    if isinstance(value, dict):
        for key, item in value.items():
            check_values(key, where)
            check_values(item, f"{where}.{key}" if where != "agreement" else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_values(item, f"{where}[{index}]")


def canonical_bytes(document: dict[str, Any]) -> bytes:
    """The bytes both parties sign and the project ID hashes: RFC 8785 for format 2, the
    format-1 canonical JSON for documents of format 1."""
    if document.get("blindlink_agreement") == 1:
        return canonical_json(document)
    return rfc8785.dumps(document)


@dataclass(frozen=True)
class ReadDocument:
    """A document read into the model. `document` is what its parties signed: the document as
    written for format 1, the model's own JSON (the same, every field stated) for format 2.
    `legacy_keys` are format-1 parties' separate Ed25519 public keys."""

    model: AgreementDocument
    document: dict[str, Any]
    legacy_decision: bool = False
    legacy_keys: tuple[tuple[str, str], ...] = ()


def read_document(document: Any) -> ReadDocument:
    """Validate a document of any format this blindlink reads; every refusal names the key."""
    check_values(document)
    if not isinstance(document, dict):
        raise AgreementError(f"agreement: must be a JSON object, not {_json_type(document)}")
    if "blindlink_agreement" not in document:
        raise AgreementError("agreement: 'blindlink_agreement' (the format version) is required")
    version = document["blindlink_agreement"]
    if type(version) is not int or version not in FORMATS:
        raise AgreementError(
            f"blindlink_agreement: {json.dumps(version)} is not a format this blindlink reads "
            f"({', '.join(map(str, FORMATS))})"
        )
    if version == 1:
        return _read_format_1(document)
    model = _validated(document)
    _check_complete(model.model_dump(mode="json", exclude_none=True), document, "agreement")
    return ReadDocument(model, _dump(model))


def new_document(settings: dict[str, Any]) -> dict[str, Any]:
    """A new format-2 document: `settings` (any section or field may be left out) with the
    model's defaults filling the rest."""
    check_values(settings)
    return _dump(_validated(settings))


def _dump(model: AgreementDocument) -> dict[str, Any]:
    return dict(model.model_dump(mode="json", exclude_none=True))


def _validated(document: dict[str, Any], rename: Callable[[str], str] = str) -> AgreementDocument:
    try:
        return AgreementDocument.model_validate(document)
    except ValidationError as exc:
        raise AgreementError(rename(_message(exc.errors()[0]))) from None


def _check_complete(full: Any, given: Any, where: str) -> None:
    """A document read from bytes states every field: refuse one the defaults had to fill."""
    if isinstance(full, dict) and isinstance(given, dict):
        for key in given.keys() - full.keys():  # the model refuses other unknown keys
            raise AgreementError(f"{where}: '{key}' is null; leave it out instead")
        for key, value in full.items():
            if key not in given:
                raise AgreementError(f"{where}: '{key}' is required")
            _check_complete(value, given[key], key if where == "agreement" else f"{where}.{key}")
    elif isinstance(full, list) and isinstance(given, list):
        for index, (value, item) in enumerate(zip(full, given, strict=True)):
            _check_complete(value, item, f"{where}[{index}]")


# --- format 1 --------------------------------------------------------------------------------

_LEGACY_DECISION = ("threshold", "threshold_floor")
_LEGACY_KEY = re.compile(r"^ed25519:[A-Za-z0-9+/]{43}=$")


def _read_format_1(document: dict[str, Any]) -> ReadDocument:
    """A format-1 document, read into the model. Format 1 also allowed: the decision rule as
    matching.threshold and matching.threshold_floor (written before matching.decision); a
    party's separate Ed25519 public_key (written before parties signed with their certificate's
    key); and no release.possible_matches (count). It had no batch_purpose."""
    if "batch_purpose" in document:
        raise AgreementError(
            "batch_purpose: format-1 agreements have none; write the agreement in format 2"
        )
    upgraded = copy.deepcopy(document)
    upgraded["blindlink_agreement"] = FORMAT_VERSION
    legacy_keys = _legacy_keys(upgraded.get("parties"))
    matching = upgraded.get("matching")
    legacy_decision = isinstance(matching, dict) and any(k in matching for k in _LEGACY_DECISION)
    if isinstance(matching, dict):
        _upgrade_decision(matching)
    release = upgraded.get("release")
    if isinstance(release, dict):
        release.setdefault("possible_matches", "count")

    def rename(message: str) -> str:
        return message.replace("matching.decision.", "matching.") if legacy_decision else message

    model = _validated(upgraded, rename)
    full = model.model_dump(mode="json", exclude_none=True)
    try:
        _check_complete(full, upgraded, "agreement")
    except AgreementError as exc:
        raise AgreementError(rename(str(exc))) from None
    return ReadDocument(model, document, legacy_decision, legacy_keys)


def _legacy_keys(parties: Any) -> tuple[tuple[str, str], ...]:
    found: dict[str, str] = {}
    for role in ROLES:
        party = parties.get(role) if isinstance(parties, dict) else None
        if not (isinstance(party, dict) and "public_key" in party):
            continue
        key = party.pop("public_key")
        if not (isinstance(key, str) and _LEGACY_KEY.match(key)):
            raise AgreementError(
                f"parties.{role}.public_key: does not match ed25519:<43 base64 characters>="
            )
        found[role] = key
    if len(found) == 2 and found["requester"] == found["custodian"]:
        raise AgreementError("parties: the requester and the custodian have the same public key")
    return tuple(found.items())


def _upgrade_decision(matching: dict[str, Any]) -> None:
    legacy = [key for key in _LEGACY_DECISION if key in matching]
    if ("decision" in matching) == bool(legacy):
        raise AgreementError(
            "matching: state the decision rule once: as 'decision', or (as agreements written "
            "before 'decision' did) as 'threshold' and 'threshold_floor'"
        )
    if legacy and len(legacy) < 2:
        missing = next(k for k in _LEGACY_DECISION if k not in legacy)
        raise AgreementError(f"matching: '{missing}' is required with '{legacy[0]}'")
    if legacy:
        matching["decision"] = {"rule": "fixed", **{k: matching.pop(k) for k in legacy}}


# --- refusals --------------------------------------------------------------------------------

_TAGGED = {"decision", "blocking"}  # where a union's tag sits in an error's location


def _message(error: ErrorDetails) -> str:
    """A pydantic error as a refusal that names the key."""
    names: list[str] = []
    for part in error["loc"]:
        # Union members' tags ("fixed", "lsh") and pydantic's names of types ("constrained-float",
        # "bool" for an optional boolean)
        if (names and names[-1] in _TAGGED and part in _TAGS) or (
            isinstance(part, str) and (not part.isidentifier() or part in _TYPE_NAMES)
        ):
            continue
        names.append(f"[{part}]" if isinstance(part, int) else str(part))
    path = _join(names)
    kind, context = error["type"], error.get("ctx", {})
    if kind == "agreement":
        where = path + context["key"] if path else context["key"].lstrip(".")
        return f"{where or 'agreement'}: {context['message']}"
    if kind in ("missing", "extra_forbidden"):
        parent, key = _join(names[:-1]) or "agreement", names[-1]
        return f"{parent}: '{key}' is " + ("required" if kind == "missing" else "not a known key")
    if kind == "union_tag_invalid":
        return (
            f"{path}.{context['discriminator'].strip(chr(39))}: {context['tag']!r} is not one of "
            f"{context['expected_tags']}"
        )
    if kind == "union_tag_not_found":
        return f"{path}: '{context['discriminator'].strip(chr(39))}' is required"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{path or 'agreement'}: must be an object, not {_json_type(error['input'])}"
    return f"{path or 'agreement'}: {error['msg']}"


_TAGS = {"fixed", "calibrated", "none", "lsh", "keys"}
_TYPE_NAMES = {"bool", "int", "float", "str"}


def _join(parts: list[str]) -> str:
    return "".join(p if p.startswith("[") or not i else f".{p}" for i, p in enumerate(parts))


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


# --- the JSON Schema -------------------------------------------------------------------------


class _SchemaGenerator(GenerateJsonSchema):
    """Every field is required in a document except the optional ones (default None, absent
    when not stated); field titles (the field names again) are left out."""

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        schema = field["schema"]
        return not (schema["type"] == "default" and schema.get("default", 0) is None)

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        value = super().default_schema(schema)
        if value.get("default", 0) is None:
            del value["default"]
        return value


def agreement_json_schema() -> dict[str, Any]:
    """The published JSON Schema of a format-2 agreement document, generated from the model
    (docs/agreement.schema.json is a copy that a test keeps fresh)."""
    schema = AgreementDocument.model_json_schema(schema_generator=_SchemaGenerator)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://blindlink.invalid/schemas/agreement-{FORMAT_VERSION}.json",
        "title": f"blindlink linkage agreement, format {FORMAT_VERSION}",
        "description": "What two parties agree to link and what each may receive. Every field "
        "is stated; the defaults are those of a new agreement (`blindlink agreement new`). The "
        "project ID is the SHA-256 of the agreement's canonical bytes per RFC 8785 (JSON "
        "Canonicalization Scheme). Each party signs those bytes, after the prefix "
        "'blindlink agreement signature\\n', with the key of the client certificate named "
        "for it.",
        **{k: _one_line(v) for k, v in schema.items() if k not in ("title", "description")},
    }


def _one_line(value: Any) -> Any:
    """The schema with docstring descriptions on one line each."""
    if isinstance(value, dict):
        return {
            k: " ".join(v.split()) if k == "description" else _one_line(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_one_line(v) for v in value]
    return value
