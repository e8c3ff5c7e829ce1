"""Searching bytes for identity values: which of a CSV file's values appear, and which of
those chance does not explain."""

from __future__ import annotations

import csv
import math
from pathlib import Path


def identity_values(*paths: Path) -> set[bytes]:
    """Every distinctive value in the CSV files: four characters or more, five for all-digit
    ones. Shorter ones occur by chance in megabytes of encodings (a three-letter name such as
    'Ada' or 'Lee' turned up in the server's WAL file in about one run in ten; four digits in
    any binary file)."""
    values = set()
    for path in paths:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for value in row.values():
                    if len(value) >= 5 or (len(value) >= 4 and not value.isdigit()):
                        values.add(value.encode())
    return values


def found_in(haystack: bytes, needles: set[bytes]) -> set[bytes]:
    return {n for n in needles if n in haystack}


# A value of n bytes is at a given place of random bytes with chance 256**-n. What the server
# receives and stores is mostly encodings and random IDs, about 100 kB per file or stream: a
# value of six bytes or more is found there by chance about once in 2**48 places, never; one of
# the 1,500 names of four or five letters now and then ('Mark' among the bytes received, once
# in about fifty runs). A leak exposes a record's values, long ones among them, or many short
# ones.
LONG_VALUE = 6
CHANCE = 1e-6  # the chance that random bytes hold more short values than chance_bound allows


def leaked(haystack: bytes, values: set[bytes]) -> set[bytes]:
    """The `values` in `haystack` that chance does not explain: every one of LONG_VALUE bytes or
    more, and the shorter ones where more are found than random bytes of that length hold
    but with chance CHANCE."""
    found = found_in(haystack, values)
    long = {v for v in found if len(v) >= LONG_VALUE}
    short = found - long
    expected = sum(
        max(len(haystack) - len(v) + 1, 0) / 256.0 ** len(v) for v in values if len(v) < LONG_VALUE
    )
    return found if len(short) > chance_bound(expected) else long


def chance_bound(expected: float) -> int:
    """The smallest k such that a Poisson count of mean `expected` exceeds k with chance below
    CHANCE."""
    k, term = 0, math.exp(-expected)
    beyond = 1.0 - term
    while beyond >= CHANCE:
        k += 1
        term *= expected / k
        beyond -= term
    return k
