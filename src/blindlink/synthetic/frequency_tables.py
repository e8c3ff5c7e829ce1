"""Public US name and age frequency tables (data/SOURCES.md): the population `blindlink generate`
draws from, and what an attacker of any deployment knows about names (`blindlink.attacks`)."""

from __future__ import annotations

import csv
import io
from importlib.resources import files

TABLES = ("last-names.csv", "female-first-names.csv", "male-first-names.csv", "ages.csv")


def read_counts(name: str) -> list[tuple[str, float]]:
    """(value, count) rows of one table, in file order."""
    text = (files("blindlink.synthetic") / "data" / name).read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text)))[1:]
    return [(row[0].strip(), float(row[1])) for row in rows]
