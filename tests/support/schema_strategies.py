"""Hypothesis strategies for linkage schemas blindlink accepts and rows of values for them:
every format, comparison, hash type and strategy, bit lengths and key settings, missing-value
sentinels, and values both valid and not."""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import strategies as st

POWERS_OF_TWO = [64, 128, 256, 512, 1024, 2048]
DATE_FORMATS = ["%Y-%m-%d", "%d/%m/%Y", "%Y%m%d", "%d %b %Y"]
PATTERNS = ["[0-9]{2,4}", "[A-Za-z ]*", "[A-Z][a-z]+", ".*"]
SENTINELS = ["", "N/A", "-"]
TEXT = st.text(st.characters(max_codepoint=0x2FF) | st.sampled_from("ÄéßЖ語💥 -/"), max_size=10)

Document = dict[str, Any]


@st.composite
def schema_documents(draw: st.DrawFn) -> Document:
    """A version 3 schema of one to six fields."""
    bit_length = draw(st.sampled_from(POWERS_OF_TWO) | st.integers(1, 300).map(lambda n: 8 * n))
    blake_allowed = bit_length & (bit_length - 1) == 0
    kdf: Document = {"type": "HKDF"}
    for key in ("salt", "info"):
        if draw(st.booleans()):
            kdf[key] = base64.b64encode(draw(st.binary(max_size=24))).decode()
    if draw(st.booleans()):
        kdf["hash"] = draw(st.sampled_from(["SHA256", "SHA512"]))
    if draw(st.booleans()):
        kdf["keySize"] = draw(st.integers(1, 64))
    count = draw(st.integers(1, 6))
    features = [draw(features_of(f"f{i}", blake_allowed)) for i in range(count)]
    return {"version": 3, "clkConfig": {"l": bit_length, "kdf": kdf}, "features": features}


@st.composite
def features_of(draw: st.DrawFn, identifier: str, blake_allowed: bool) -> Document:
    if draw(st.integers(0, 9)) == 0:
        return {"identifier": identifier, "ignored": True}
    fmt = draw(formats())
    numeric_ok = fmt["type"] == "integer" or fmt.get("pattern") == "[0-9]{2,4}"
    hashing: Document = {
        "comparison": draw(comparisons(numeric_ok)),
        "strategy": draw(
            st.builds(lambda k: {"bitsPerToken": k}, st.integers(1, 40))
            | st.builds(lambda k: {"bitsPerFeature": k}, st.integers(1, 200))
        ),
    }
    hashes = [{"type": "doubleHash"}, {"type": "doubleHash", "prevent_singularity": True}]
    hashes.append({"type": "doubleHash", "prevent_singularity": False})
    if blake_allowed:
        hashes.append({"type": "blakeHash"})
    if draw(st.booleans()) or not blake_allowed:
        hashing["hash"] = draw(st.sampled_from(hashes))
    if draw(st.booleans()):
        missing = {"sentinel": draw(st.sampled_from(SENTINELS))}
        if hashing["comparison"]["type"] == "numeric":
            # a numeric comparison hashes numbers (or nothing) only
            if missing["sentinel"] or draw(st.booleans()):
                missing["replaceWith"] = draw(st.sampled_from(["0", ""]))
        elif draw(st.booleans()):
            missing["replaceWith"] = draw(st.sampled_from(["", "?", "zz", "0"]))
        hashing["missingValue"] = missing
    return {"identifier": identifier, "format": fmt, "hashing": hashing}


@st.composite
def formats(draw: st.DrawFn) -> Document:
    kind = draw(st.sampled_from(["string", "pattern", "integer", "date", "enum"]))
    if kind == "integer":
        fmt: Document = {"type": "integer"}
        for key in ("minimum", "maximum"):
            if draw(st.booleans()):
                fmt[key] = draw(st.integers(-50, 200))
        return fmt
    if kind == "date":
        return {"type": "date", "format": draw(st.sampled_from(DATE_FORMATS))}
    if kind == "enum":
        return {"type": "enum", "values": draw(st.lists(TEXT, min_size=1, max_size=4))}
    fmt = {"type": "string"}
    if draw(st.booleans()):
        fmt["encoding"] = draw(st.sampled_from(["ascii", "utf-8", "utf-16", "utf-32"]))
    if kind == "pattern":
        fmt["pattern"] = draw(st.sampled_from(PATTERNS))
        return fmt
    if draw(st.booleans()):
        fmt["case"] = draw(st.sampled_from(["upper", "lower", "mixed"]))
    if draw(st.booleans()):
        fmt["minLength"] = draw(st.integers(0, 3))
    if draw(st.booleans()):
        fmt["maxLength"] = draw(st.integers(1, 8))
    return fmt


def comparisons(numeric_ok: bool) -> st.SearchStrategy[Document]:
    ngram = st.builds(
        lambda n, positional: {"type": "ngram", "n": n, **positional},
        st.integers(1, 4),
        st.sampled_from([{}, {"positional": True}, {"positional": False}]),
    )
    exact = st.just({"type": "exact"})
    if not numeric_ok:
        return ngram | exact
    numeric = st.builds(
        lambda distance, resolution, precision: {
            "type": "numeric",
            "thresholdDistance": distance,
            "resolution": resolution,
            **precision,
        },
        st.integers(1, 30) | st.sampled_from([1.5, 2.5, 7.25]),
        st.integers(1, 5),
        st.sampled_from([{}, {"fractional_precision": 0}, {"fractional_precision": 2}]),
    )
    return ngram | exact | numeric


def values_for(feature: Document) -> st.SearchStrategy[str]:
    """Values a field may well accept, mixed with arbitrary text."""
    fmt = feature.get("format", {})
    likely: st.SearchStrategy[str]
    if fmt.get("type") == "integer":
        likely = st.integers(-60, 250).map(str) | st.sampled_from(["+7", " 12", "007"])
    elif fmt.get("type") == "date":
        likely = st.dates().map(lambda d: d.strftime(fmt["format"]))
    elif fmt.get("type") == "enum":
        likely = st.sampled_from(fmt["values"])
    elif fmt.get("pattern") == "[0-9]{2,4}":
        likely = st.from_regex(r"[0-9]{2,4}", fullmatch=True)
    else:
        likely = TEXT
    return likely | likely | st.sampled_from(SENTINELS) | TEXT


@st.composite
def schema_with_rows(draw: st.DrawFn) -> tuple[Document, list[list[str]]]:
    document = draw(schema_documents())
    row = st.tuples(*(values_for(f) for f in document["features"])).map(list)
    return document, draw(st.lists(row, min_size=1, max_size=8))
