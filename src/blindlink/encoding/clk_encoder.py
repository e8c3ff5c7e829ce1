"""The record encoding of clkhash, with each distinct field value validated and hashed once.

A record's CLK is a Bloom filter of `clkConfig.l` bits: each field's tokens (fields.py) set bits
chosen by keyed hashes under that field's keys, which HKDF derives from the shared secret. The
bits are those clkhash's `crypto_bloom_filter` sets, byte for byte (tests/test_clk_encoder.py
and tests/test_clkhash_compat.py compare with clkhash itself). Names, places and dates repeat
across a file, so remembering each value's bits turns most fields into a dictionary lookup and
an OR; bits are kept as Python integers, bit 0 of the filter being the integer's top bit.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from blindlink.encoding.fields import Field, Hashing, InvalidValue
from blindlink.encoding.schema import LinkageSchema

# Distinct values remembered per field; the memory is bounded and the cache starts afresh
# when it fills.
CACHE_ENTRIES = 1 << 16

_HKDF_HASHES = {"SHA256": hashes.SHA256, "SHA512": hashes.SHA512}

TokenPositions = Callable[[bytes, int], list[int]]
"""(token bytes, bits to set) -> filter positions; a position may repeat."""


@dataclass(frozen=True)
class ValueProblem:
    """A field value the schema refuses: its row within the chunk, its 1-based column, the field
    and the reason with the value redacted."""

    row: int
    column: int
    field: str
    message: str


def field_keys(schema: LinkageSchema, secret: bytes) -> list[tuple[bytes, bytes]]:
    """Each field's two hashing keys: HKDF output cut into keySize pieces, in field order."""
    kdf, size = schema.kdf, schema.kdf.key_size
    material = HKDF(
        algorithm=_HKDF_HASHES[kdf.hash](),
        length=2 * size * len(schema.fields),
        salt=kdf.salt,
        info=kdf.info,
    ).derive(secret)
    pieces = [material[i : i + size] for i in range(0, len(material), size)]
    return list(zip(pieces[::2], pieces[1::2], strict=True))


def token_positions(hashing: Hashing, keys: tuple[bytes, bytes], bits: int) -> TokenPositions:
    """The hash a field's tokens go through, as the schema names it."""
    if hashing.hash == "blakeHash":
        return lambda token, k: _blake_positions(token, k, keys[0], bits)
    return lambda token, k: _double_hash_positions(
        token, k, keys, bits, hashing.prevent_singularity
    )


def _blake_positions(token: bytes, k: int, key: bytes, bits: int) -> list[int]:
    """Keyed BLAKE2b, salted with the call's number, read as 32 little-endian 16-bit integers
    per call (the byte order of every platform clkhash runs on), as many calls as k needs."""
    shorts: list[int] = []
    for call in range((k + 31) // 32):
        digest = hashlib.blake2b(token, key=key, salt=str(call).encode()).digest()
        shorts.extend(struct.unpack("<32H", digest))
    return [s % bits for s in shorts[:k]]


def _double_hash_positions(
    token: bytes, k: int, keys: tuple[bytes, bytes], bits: int, non_singular: bool
) -> list[int]:
    """Positions h1 + i * h2 (mod l) with h1 = HMAC-SHA1 and h2 = HMAC-MD5 under the field's two
    keys. h2 = 0 would put all k bits in one place; `non_singular` rehashes with an appended
    counter character until it is not."""
    first = int.from_bytes(hmac.digest(keys[0], token, "sha1"), "big") % bits
    step = int.from_bytes(hmac.digest(keys[1], token, "md5"), "big") % bits
    counter = 0
    while non_singular and step == 0:
        suffix = chr(counter).encode()
        step = int.from_bytes(hmac.digest(keys[1], token + suffix, "md5"), "big") % bits
        counter += 1
    return [(first + i * step) % bits for i in range(k)]


class _FieldHasher:
    """One field's validation and Bloom filter bits (as an integer), remembered per value."""

    def __init__(self, field: Field, keys: tuple[bytes, bytes], bit_length: int) -> None:
        self.field = field
        self.bit_length = bit_length
        self.hashing = field.hashing
        self.cache: dict[str, int] = {}
        self.token_cache: dict[tuple[str, int], int] = {}
        if self.hashing is not None:
            self.positions = token_positions(self.hashing, keys, bit_length)
            self.encoding = self.hashing.encoding

    def bits(self, value: str) -> int:
        cached = self.cache.get(value)
        if cached is None:
            cached = self._compute(value)
            if self.hashing is not None:
                if len(self.cache) >= CACHE_ENTRIES:
                    self.cache.clear()
                self.cache[value] = cached
        return cached

    def _compute(self, value: str) -> int:
        self.field.validate(value)
        if self.hashing is None:
            return 0
        tokens = self.field.tokens(value)
        bits = 0
        if not tokens:
            return bits
        for token, k in zip(tokens, self.hashing.strategy.bits_per_token(len(tokens)), strict=True):
            bits |= self._token_bits(token, k)
        return bits

    def _token_bits(self, token: str, k: int) -> int:
        """The bits one token sets: tokens set their bits independently, so a value's filter is
        the OR of its tokens' filters."""
        cached = self.token_cache.get((token, k))
        if cached is None:
            top = self.bit_length - 1
            cached = 0
            for position in self.positions(token.encode(self.encoding), k):
                cached |= 1 << (top - position)
            self.token_cache[(token, k)] = cached
        return cached


class ClkEncoder:
    """Encodes rows (schema column order) into clkhash CLKs under one secret."""

    def __init__(self, schema: LinkageSchema, secret: bytes) -> None:
        keys = field_keys(schema, secret)
        self.width = schema.bit_length // 8
        self.fields = [
            _FieldHasher(field, keys, schema.bit_length)
            for field, keys in zip(schema.fields, keys, strict=True)
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
            except InvalidValue as exc:
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
                    field.field.validate(value)
                except InvalidValue as exc:
                    return _problem(index, row, self.fields, exc)
        return None


def _problem(
    index: int, row: Sequence[str], fields: list[_FieldHasher], exc: InvalidValue
) -> ValueProblem:
    """Which value of the row was refused: the first one its field does not accept."""
    for column, (value, field) in enumerate(zip(row, fields, strict=True), start=1):
        try:
            field.field.validate(value)
        except InvalidValue as own:
            return ValueProblem(index, column, field.field.identifier, redact(str(own), value))
    raise exc


def redact(message: str, value: str) -> str:
    """Validation messages quote the offending value, raw or as repr(); keep identity data
    out of errors by replacing every quoted form of it."""
    if value:
        for quoted in (repr(value), f"'{value}'", f'"{value}"'):
            message = message.replace(quoted, "'…'")
    return " ".join(message.split())
