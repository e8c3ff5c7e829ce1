"""A linkage schema's fields: how each value is validated, formatted and cut into tokens.

These follow the version 3 linkage schema that clkhash defines, so that blindlink's encodings are
clkhash's, byte for byte (tests/test_clk_encoder.py checks them against clkhash itself): a
field's format validates a value and formats it for hashing (integers without sign or padding,
dates as YYYYMMDD), its comparison cuts the formatted value into tokens, and its strategy says how
many bits each token sets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal


class InvalidValue(ValueError):
    """A value its field's format does not accept; the message quotes the value."""


# --- formats -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StringFormat:
    """Text: a pattern it must match in full, or a case and length bounds."""

    pattern: re.Pattern[str] | None = None
    case: Literal["lower", "upper", "mixed"] = "mixed"
    min_length: int | None = None
    max_length: int | None = None

    def check(self, value: str) -> None:
        if self.pattern is not None:
            if self.pattern.fullmatch(value) is None:
                raise InvalidValue(
                    f"Expected entry that conforms to regular expression "
                    f"'{self.pattern.pattern}'. Read '{value}'."
                )
            return
        if self.min_length is not None and len(value) < self.min_length:
            raise InvalidValue(
                f"Expected string length of at least {self.min_length}. "
                f"Read string '{value}' of length {len(value)}."
            )
        if self.max_length is not None and len(value) > self.max_length:
            raise InvalidValue(
                f"Expected string length of at most {self.max_length}. "
                f"Read string '{value}' of length {len(value)}."
            )
        if self.case == "upper" and value.upper() != value:
            raise InvalidValue(f"Expected upper case string. Read '{value}'.")
        if self.case == "lower" and value.lower() != value:
            raise InvalidValue(f"Expected lower case string. Read '{value}'.")

    def normalise(self, value: str) -> str:
        return value


@dataclass(frozen=True)
class IntegerFormat:
    """A base-10 integer within optional bounds; hashed without sign, spaces or leading zeros."""

    minimum: int | None = None
    maximum: int | None = None

    def check(self, value: str) -> None:
        number = _integer(value)
        if self.minimum is not None and number < self.minimum:
            raise InvalidValue(f"Expected integer of at least {self.minimum}. Read '{value}'.")
        if self.maximum is not None and number > self.maximum:
            raise InvalidValue(f"Expected integer of at most {self.maximum}. Read '{value}'.")

    def normalise(self, value: str) -> str:
        return str(_integer(value))


def _integer(value: str) -> int:
    try:
        return int(value, 10)
    except ValueError:
        raise InvalidValue(f"Invalid integer. Read '{value}'.") from None


@dataclass(frozen=True)
class DateFormat:
    """A date in a strptime format; hashed as YYYYMMDD."""

    format: str

    def check(self, value: str) -> None:
        self._parse(value)

    def normalise(self, value: str) -> str:
        return self._parse(value).strftime("%Y%m%d")

    def _parse(self, value: str) -> datetime:
        try:
            return datetime.strptime(value, self.format)
        except ValueError as exc:
            raise InvalidValue(f"Validation error for date type: {exc}") from None


@dataclass(frozen=True)
class EnumFormat:
    """One of a fixed list of values."""

    values: tuple[str, ...]

    def check(self, value: str) -> None:
        if value not in self.values:
            raise InvalidValue(
                f"Expected enum value to be one of {list(self.values)}. Read '{value}'."
            )

    def normalise(self, value: str) -> str:
        return value


Format = StringFormat | IntegerFormat | DateFormat | EnumFormat


# --- comparisons: how a formatted value becomes tokens -------------------------------------------


@dataclass(frozen=True)
class NgramComparison:
    """Overlapping n-character slices of the value, padded with n-1 spaces at either end;
    positional n-grams carry their 1-based position ("3 ab")."""

    n: int
    positional: bool = False

    def tokenize(self, word: str) -> list[str]:
        if not word:
            return []
        n = self.n
        if n > 1:
            pad = " " * (n - 1)
            word = pad + word + pad
        grams = [word[i : i + n] for i in range(len(word) - n + 1)]
        if self.positional:
            return [f"{i} {gram}" for i, gram in enumerate(grams, start=1)]
        return grams


@dataclass(frozen=True)
class ExactComparison:
    """The whole value as one token."""

    def tokenize(self, word: str) -> list[str]:
        return [word] if word else []


@dataclass(frozen=True)
class NumericComparison:
    """A number's neighbourhood (Vatsalan and Christen 2015): 2 * resolution + 1 points on a grid,
    so that numbers less than `thresholdDistance` apart share tokens. Numbers are scaled by
    10**fractional_precision to integers, and by 2 * resolution so the grid step is the scaled
    threshold distance itself."""

    threshold_distance: float
    resolution: int
    fractional_precision: int = 0

    @property
    def interval(self) -> int:
        return int(round(self.threshold_distance * 10**self.fractional_precision))

    def tokenize(self, word: str) -> list[str]:
        if not word:
            return []
        scale = 10**self.fractional_precision
        try:
            number = int(word, 10) * scale
        except ValueError:
            number = _scaled_float(word, scale)
        step = self.interval
        number *= 2 * self.resolution
        residue = number % step
        if residue:
            number += -residue if residue < step / 2 else step - residue
        return [str(number + i * step) for i in range(-self.resolution, self.resolution + 1)]


def _scaled_float(word: str, scale: int) -> int:
    try:
        number = float(word)
        return int(round(number * scale)) if scale > 1 else int(number)
    except (ValueError, OverflowError):
        raise InvalidValue(f"Expected a number for a numeric comparison. Read '{word}'.") from None


# --- strategies: how many bits each token sets ---------------------------------------------------


@dataclass(frozen=True)
class BitsPerToken:
    """Every token sets `k` bits."""

    k: int

    def bits_per_token(self, tokens: int) -> list[int]:
        return [self.k] * tokens


@dataclass(frozen=True)
class BitsPerFeature:
    """The field's tokens set `total` bits between them, the first ones one more when it does not
    divide evenly."""

    total: int

    def bits_per_token(self, tokens: int) -> list[int]:
        k, extra = divmod(self.total, tokens)
        return [k + 1] * extra + [k] * (tokens - extra)


Strategy = BitsPerToken | BitsPerFeature
Comparison = NgramComparison | ExactComparison | NumericComparison


# --- fields ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hashing:
    """How a field's tokens enter the Bloom filter.

    `hash`: "blakeHash" (keyed BLAKE2b) or "doubleHash" (HMAC-SHA1 and HMAC-MD5, Schnell et al.),
    `prevent_singularity` only with the latter. `encoding` turns tokens into bytes. A value equal
    to `sentinel` is missing: it is not validated and `replace_with` is hashed instead."""

    comparison: Comparison
    strategy: Strategy
    hash: Literal["blakeHash", "doubleHash"] = "blakeHash"
    prevent_singularity: bool = False
    encoding: str = "utf-8"
    sentinel: str | None = None
    replace_with: str | None = None


@dataclass(frozen=True)
class Field:
    """One column of the schema: its format, and how it is hashed (None: ignored)."""

    identifier: str
    format: Format | None = None
    hashing: Hashing | None = None

    def is_missing(self, value: str) -> bool:
        return self.hashing is not None and value == self.hashing.sentinel

    def validate(self, value: str) -> None:
        """Raise InvalidValue unless the format accepts `value`; ignored fields accept all."""
        hashing = self.hashing
        if hashing is None or value == hashing.sentinel or self.format is None:
            return
        try:
            value.encode(hashing.encoding)
        except UnicodeEncodeError:
            raise InvalidValue(
                f"Expected entry that can be encoded in {hashing.encoding}. Read '{value}'."
            ) from None
        self.format.check(value)
        if isinstance(hashing.comparison, NumericComparison):
            hashing.comparison.tokenize(self.format.normalise(value))

    def format_value(self, value: str) -> str:
        """The text that is hashed for a value: the missing-value replacement or the value in
        its format's normal form (the value as it is for an ignored field)."""
        hashing = self.hashing
        if hashing is None or self.format is None:
            return value
        if value == hashing.sentinel:
            return hashing.replace_with if hashing.replace_with is not None else value
        return self.format.normalise(value)

    def tokens(self, value: str) -> Sequence[str]:
        """The tokens hashed for a valid value (none for an ignored field)."""
        if self.hashing is None:
            return []
        return self.hashing.comparison.tokenize(self.format_value(value))
