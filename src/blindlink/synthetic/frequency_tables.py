"""Public US name and age frequency tables (data/SOURCES.md): the population `blindlink generate`
draws from, and what an attacker of any deployment knows about names (`blindlink.attacks`)."""

from __future__ import annotations

import csv
from importlib.resources import files

TABLES = ("last-names.csv", "female-first-names.csv", "male-first-names.csv", "ages.csv")


def read_counts(name: str) -> list[tuple[str, float]]:
    """(value, count) rows of one table, in file order."""
    with (files("blindlink.synthetic") / "data" / name).open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [(row[0].strip(), float(row[1])) for row in rows]
