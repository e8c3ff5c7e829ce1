"""Keyed blocking keys: computed by each party from its records, compared by the server.

For each key the agreement names (a combination of fields, each whole or its first characters),
a record's key is the first 8 bytes of HMAC-SHA256 over the normalised values: the schema's
formatting of the field (dates as YYYYMMDD), case-folded, with runs of whitespace made one
space. The HMAC key is derived from the shared secret, one per combination, so the server cannot
test guesses, and equal values under different combinations give unrelated keys. What the server
learns is which records share a key, and so how many do. A record missing any field of a
combination has no key for it (0).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import numpy as np

from blindlink.canonical import canonical_json
from blindlink.encoding.fields import Field
from blindlink.encoding.schema import LinkageSchema
from blindlink.errors import SchemaError
from blindlink.hardening.keys import derive_key
from blindlink.matching.blocking import KeyBlocking

_SEPARATOR = "\x1f"  # unit separator: cannot occur in a normalised value

# Blocking keys for the shipped default schema's fields (people registers): a typo, a move or a
# wrong date of birth breaks one or two of them, rarely all four.
DEFAULT_SCHEMA_KEYS: list[list[dict[str, str]]] = [
    [{"field": "given_name"}, {"field": "surname"}],
    [{"field": "surname"}, {"field": "date_of_birth"}],
    [{"field": "given_name"}, {"field": "date_of_birth"}],
    [{"field": "street_address"}, {"field": "postcode"}],
]


class _Part:
    """One field of a key: its column, prefix length and remembered normalised values."""

    def __init__(self, column: int, field: Field, prefix: int | None) -> None:
        self.column = column
        self.field = field
        self.prefix = prefix
        self.cache: dict[str, str] = {}

    def value(self, row: Sequence[str]) -> str:
        raw = row[self.column]
        normal = self.cache.get(raw)
        if normal is None:
            normal = self._normalise(raw)
            if len(self.cache) >= 1 << 16:
                self.cache.clear()
            self.cache[raw] = normal
        return normal

    def _normalise(self, raw: str) -> str:
        if self.field.is_missing(raw):
            return ""
        normal = " ".join(self.field.format_value(raw).casefold().split())
        return normal[: self.prefix] if self.prefix else normal


class BlockingKeyMaker:
    """The agreed blocking keys of valid rows (schema column order) under one secret."""

    def __init__(self, blocking: KeyBlocking, schema: LinkageSchema, secret: bytes) -> None:
        fields = schema.fields
        self.keys: list[tuple[bytes, list[_Part]]] = []
        for number, (key, document) in enumerate(
            zip(blocking.keys, blocking.document(), strict=True), start=1
        ):
            parts = []
            for part in key:
                if part.field not in schema.columns:
                    raise SchemaError(
                        f"blocking key {number} names the field '{part.field}', which the "
                        f"linkage schema does not have (its columns: {', '.join(schema.columns)})"
                    )
                column = schema.columns.index(part.field)
                parts.append(_Part(column, fields[column], part.prefix))
            mac_key = derive_key(secret, "blocking key", canonical_json(document).decode())
            self.keys.append((mac_key, parts))

    def make(self, rows: Sequence[Sequence[str]]) -> np.ndarray:
        """uint64 keys, one row per record and one column per agreed key; 0: no key."""
        out = np.zeros((len(rows), len(self.keys)), dtype=np.uint64)
        for index, row in enumerate(rows):
            for column, (mac_key, parts) in enumerate(self.keys):
                values = [part.value(row) for part in parts]
                if all(values):
                    digest = hmac.new(
                        mac_key, _SEPARATOR.join(values).encode(), hashlib.sha256
                    ).digest()
                    out[index, column] = int.from_bytes(digest[:8], "little") or 1
        return out
