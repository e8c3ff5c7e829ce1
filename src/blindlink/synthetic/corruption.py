"""Corrupting copies of records the way real registries disagree about the same person.

Errors are applied to rendered string columns in place. Every random choice comes from the
record's own row of uniforms (`CORRUPTION_DRAWS` per record), so a record's errors do not depend
on which records are corrupted with it, and per-record work is plain string handling.
"""

import datetime as dt
from dataclasses import dataclass, fields
from functools import cache
from typing import Self

import numpy as np

from blindlink.synthetic.nicknames import FEMALE_VARIANTS, MALE_VARIANTS
from blindlink.synthetic.population import (
    ADDRESS_DRAWS,
    REFERENCE_DATE,
    Columns,
    draw_addresses,
    surnames,
)

MISSABLE_FIELDS = (
    "given_name",
    "surname",
    "date_of_birth",
    "sex",
    "street_address",
    "city",
    "postcode",
)
TYPO_FIELDS = ("given_name", "surname", "street_address", "city")

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"
_EARLIEST_BIRTH = dt.date(1900, 1, 1)
_LATEST_BIRTH: dt.date = REFERENCE_DATE.astype(dt.date)


@dataclass(frozen=True)
class CorruptionRates:
    """Per-field probability that a corrupted copy gets each kind of error."""

    typo: float = 0.15  # per record: one edit in one of the name or address fields
    missing: float = 0.05  # per field: the value is blanked
    nickname: float = 0.03  # per record; only names with a known variant change
    surname_change: float = 0.03  # per record: a new surname drawn by frequency
    moved: float = 0.05  # per record: street address, city and postcode all replaced
    date_swap: float = 0.03  # per record: day/month swapped or two adjacent digits transposed

    def __post_init__(self) -> None:
        for field in fields(self):
            rate = getattr(self, field.name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"corruption rate {field.name}={rate} is not in [0, 1]")

    @classmethod
    def scaled(cls, factor: float) -> Self:
        """The default rates multiplied by `factor`, each clipped to [0, 1]."""
        defaults = cls()
        return cls(
            **{f.name: min(max(getattr(defaults, f.name) * factor, 0.0), 1.0) for f in fields(cls)}
        )


# Columns of the uniforms `corrupt` reads per record, in order.
_HITS = slice(0, 5)  # nickname, surname change, moved, date swap, typo
_MISSING = slice(5, 5 + len(MISSABLE_FIELDS))
_NICKNAME = _MISSING.stop
_SURNAME = _NICKNAME + 1
_ADDRESS = slice(_SURNAME + 1, _SURNAME + 1 + ADDRESS_DRAWS)
_DATE = slice(_ADDRESS.stop, _ADDRESS.stop + 2)
_TYPO = slice(_DATE.stop, _DATE.stop + 4)
CORRUPTION_DRAWS = _TYPO.stop


def corrupt(columns: Columns, rates: CorruptionRates, u: np.ndarray) -> None:
    """Give each record each kind of error independently with its rate, in place; row i of the
    uniforms `u` (shape (records, CORRUPTION_DRAWS)) decides record i's errors.

    Replacements come first and blanking last, so a blanked field stays blank.
    """
    per_record = [rates.nickname, rates.surname_change, rates.moved, rates.date_swap, rates.typo]
    hit = u[:, _HITS] < per_record
    _use_nicknames(columns, np.flatnonzero(hit[:, 0]), u[:, _NICKNAME])
    _change_surnames(columns, np.flatnonzero(hit[:, 1]), u[:, _SURNAME])
    _move(columns, np.flatnonzero(hit[:, 2]), u[:, _ADDRESS])
    _swap_dates(columns, np.flatnonzero(hit[:, 3]), u[:, _DATE])
    _add_typos(columns, np.flatnonzero(hit[:, 4]), u[:, _TYPO])
    _blank(columns, u[:, _MISSING] < rates.missing)


def _use_nicknames(columns: Columns, rows: np.ndarray, u: np.ndarray) -> None:
    given, sex = columns["given_name"], columns["sex"]
    for row, draw in zip(rows.tolist(), u[rows].tolist(), strict=True):
        variants = (MALE_VARIANTS if sex[row] == "M" else FEMALE_VARIANTS).get(given[row], ())
        if variants:
            given[row] = variants[int(draw * len(variants))]


def _change_surnames(columns: Columns, rows: np.ndarray, u: np.ndarray) -> None:
    """A new surname drawn by frequency among all surnames but the current one."""
    table = surnames()
    current = np.asarray([_surname_index()[columns["surname"][row]] for row in rows.tolist()])
    current = current.astype(np.int64)
    p_current = table.probabilities[current]
    before = table.cumulative[current] - p_current
    target = u[rows] * (1 - p_current)
    new = table.index(np.where(target >= before, target + p_current, target))
    # Rounding can land on the current name at the edge of its interval: take the next one.
    new = np.where(new == current, (current + 1) % len(table.values), new)
    for row, surname in zip(rows.tolist(), table.values[new].tolist(), strict=True):
        columns["surname"][row] = surname


@cache
def _surname_index() -> dict[str, int]:
    return {name: i for i, name in enumerate(surnames().values.tolist())}


def _move(columns: Columns, rows: np.ndarray, u: np.ndarray) -> None:
    rendered = draw_addresses(u[rows]).render()
    for field, values in zip(("street_address", "city", "postcode"), rendered, strict=True):
        column = columns[field]
        for row, value in zip(rows.tolist(), values, strict=True):
            column[row] = value


def _swap_dates(columns: Columns, rows: np.ndarray, u: np.ndarray) -> None:
    dates = columns["date_of_birth"]
    for row, (kind, position) in zip(rows.tolist(), u[rows].tolist(), strict=True):
        dates[row] = swap_date(dates[row], kind, position)


def _add_typos(columns: Columns, rows: np.ndarray, u: np.ndarray) -> None:
    for row, draws in zip(rows.tolist(), u[rows].tolist(), strict=True):
        column = columns[TYPO_FIELDS[int(draws[0] * len(TYPO_FIELDS))]]
        column[row] = make_typo(column[row], *draws[1:])


def _blank(columns: Columns, missing: np.ndarray) -> None:
    for index, field in enumerate(MISSABLE_FIELDS):
        column = columns[field]
        for row in np.flatnonzero(missing[:, index]).tolist():
            column[row] = ""


def make_typo(text: str, kind: float, position: float, char: float) -> str:
    """One substitution, insertion, deletion or transposition; draws are uniforms in [0, 1).

    The first character is never touched: first-letter slips are rarer in practice, and
    sparing it keeps names in title case.
    """
    positions = [i for i in range(1, len(text)) if text[i].isalnum()]
    if not positions:
        return text
    i = positions[int(position * len(positions))]
    alphabet = _DIGITS if text[i].isdigit() else _LETTERS
    new = alphabet[int(char * len(alphabet))]
    match int(kind * 4):
        case 1:
            return text[:i] + new + text[i:]
        case 2 if len(text) > 2:
            return text[:i] + text[i + 1 :]
        case 3 if i + 1 < len(text) and text[i + 1].isalnum() and text[i] != text[i + 1]:
            return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    if new == text[i].lower():
        new = alphabet[(alphabet.index(new) + 1) % len(alphabet)]
    return text[:i] + (new.upper() if text[i].isupper() else new) + text[i + 1 :]


def swap_date(iso: str, kind: float, position: float) -> str:
    """A keying slip in a `YYYY-MM-DD` date that still gives a valid, plausible birth date.

    Day and month are swapped (when that is a different valid date) for half the draws of
    `kind`; otherwise two adjacent digits are transposed. The result stays between 1900 and
    the reference date; if no slip qualifies (about one date in ten, e.g. 1988-08-23) the
    date is returned unchanged.
    """
    year, month, day = iso.split("-")
    day_month = f"{year}-{day}-{month}"
    can_swap_day_month = day != month and int(day) <= 12
    if can_swap_day_month and kind < 0.5:
        return day_month
    candidates = [c for c in _transpositions(year + month + day) if _plausible_birth(c)]
    if candidates:
        chosen = candidates[int(position * len(candidates))]
        return f"{chosen[:4]}-{chosen[4:6]}-{chosen[6:]}"
    return day_month if can_swap_day_month else iso


def _transpositions(digits: str) -> list[str]:
    return [
        digits[:i] + digits[i + 1] + digits[i] + digits[i + 2 :]
        for i in range(len(digits) - 1)
        if digits[i] != digits[i + 1]
    ]


def _plausible_birth(digits: str) -> bool:
    try:
        born = dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return False
    return _EARLIEST_BIRTH <= born <= _LATEST_BIRTH
