"""clkhash's record encoding, with each distinct field value validated and hashed once.

A record is encoded exactly as clkhash's `crypto_bloom_filter` encodes it: the same field
formatting, tokenizers, hash functions and derived keys, OR-ed into one Bloom filter. Names,
places and dates repeat across a file, so remembering each value's Bloom filter bits turns most
fields into a dictionary lookup and an OR (tests/test_clkhash_compat.py proves the output is
byte-identical to clkhash's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clkhash.bloomfilter import hashing_function_from_properties
from clkhash.field_formats import FieldSpec, InvalidEntryError
from clkhash.key_derivation import generate_key_lists

from blindlink.encoding.schema import LinkageSchema

# Distinct values remembered per field; the memory is bounded and the cache starts afresh
# when it fills.
CACHE_ENTRIES = 1 << 16


@dataclass(frozen=True)
class ValueProblem:
    """A field value the schema refuses: its row within the chunk, its 1-based column, the field
    and clkhash's reason with the value redacted."""

    row: int
    column: int
    field: str
    message: str


class _FieldHasher:
    """One field's validation and Bloom filter bits (as an integer), remembered per value."""

    def __init__(self, spec: FieldSpec, keys: Sequence[bytes], bit_length: int) -> None:
        self.spec = spec
        self.keys = keys
        self.bit_length = bit_length
        self.properties = spec.hashing_properties
        self.cache: dict[str, int] = {}
        self.token_cache: dict[tuple[str, int], int] = {}
        if self.properties is not None:
            self.hash_function = hashing_function_from_properties(self.properties)

    def bits(self, value: str) -> int:
        cached = self.cache.get(value)
        if cached is None:
            cached = self._compute(value)
            if self.properties is not None:
                if len(self.cache) >= CACHE_ENTRIES:
                    self.cache.clear()
                self.cache[value] = cached
        return cached

    def _compute(self, value: str) -> int:
        self.spec.validate(value)
        fhp = self.properties
        if fhp is None:
            return 0
        ngrams = list(fhp.comparator.tokenize(self.spec.format_value(value)))
        bits = 0
        if not ngrams:
            return bits
        for ngram, k in zip(ngrams, fhp.strategy.bits_per_token(len(ngrams)), strict=True):
            bits |= self._token_bits(ngram, k)
        return bits

    def _token_bits(self, ngram: str, k: int) -> int:
        """The bits clkhash sets for one token: its hash functions set each token's bits
        independently, so a value's filter is the OR of its tokens' filters."""
        cached = self.token_cache.get((ngram, k))
        if cached is None:
            bloom = self.hash_function(
                [ngram], self.keys, [k], self.bit_length, self.properties.encoding
            )
            cached = self.token_cache[(ngram, k)] = int.from_bytes(bloom.tobytes(), "big")
        return cached


def field_keys(schema: LinkageSchema, secret: bytes) -> Sequence[Sequence[bytes]]:
    """clkhash's per-field hashing keys, derived from the secret as the schema says."""
    parsed = schema.clkhash
    return generate_key_lists(
        secret,
        len(parsed.fields),
        key_size=parsed.kdf_key_size,
        salt=parsed.kdf_salt,
        info=parsed.kdf_info,
        kdf=parsed.kdf_type,
        hash_algo=parsed.kdf_hash,
    )


class ClkEncoder:
    """Encodes rows (schema column order) into clkhash CLKs under one secret."""

    def __init__(self, schema: LinkageSchema, secret: bytes) -> None:
        parsed = schema.clkhash
        keys = field_keys(schema, secret)
        self.width = parsed.l // 8
        self.fields = [
            _FieldHasher(spec, field_keys, parsed.l)
            for spec, field_keys in zip(parsed.fields, keys, strict=True)
        ]

    def encode(self, rows: Sequence[Sequence[str]]) -> bytes | ValueProblem:
        """The rows' CLKs concatenated, or the first value the schema refuses."""
        out = bytearray()
        width, fields = self.width, self.fields
        for index, row in enumerate(rows):
            clk = 0
            try:
                for value, field in zip(row, fields, strict=True):
                    clk |= field.bits(value)
            except InvalidEntryError as exc:
                return _problem(index, row, fields, exc)
            out += clk.to_bytes(width, "big")
        return bytes(out)

    def check(self, rows: Sequence[Sequence[str]]) -> ValueProblem | None:
        """The first value the schema refuses, without encoding."""
        for index, row in enumerate(rows):
            for value, field in zip(row, self.fields, strict=True):
                if value in field.cache:
                    continue  # encoded before, so valid
                try:
                    field.spec.validate(value)
                except InvalidEntryError as exc:
                    return _problem(index, row, self.fields, exc)
        return None


def _problem(
    index: int, row: Sequence[str], fields: list[_FieldHasher], exc: InvalidEntryError
) -> ValueProblem:
    """Which value of the row was refused: the first one its field does not accept."""
    for column, (value, field) in enumerate(zip(row, fields, strict=True), start=1):
        try:
            field.spec.validate(value)
        except InvalidEntryError as own:
            return ValueProblem(index, column, field.spec.identifier, redact(str(own), value))
    raise exc


def redact(message: str, value: str) -> str:
    """clkhash quotes the offending value in its messages, raw or as repr(); keep identity data
    out of errors by replacing every quoted form of it."""
    if value:
        for quoted in (repr(value), f"'{value}'", f'"{value}"'):
            message = message.replace(quoted, "'…'")
    return " ".join(message.split())
