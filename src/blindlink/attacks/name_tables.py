"""Public name-frequency lists as an attacker uses them: each name's share of the population
and the q-gram tokens the linkage schema makes of it.

The tables are public US name statistics (surnames with counts; given names with counts per sex)
that clkhash also ships, so an attacker of any deployment has them too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import sparse

from blindlink.synthetic.frequency_tables import read_counts

Tokenizer = Callable[[str], Iterable[str]]


@dataclass(frozen=True)
class NameTable:
    """Names with population shares (summing to 1) and a names x tokens incidence matrix."""

    names: list[str]
    shares: np.ndarray
    vocabulary: list[str]
    incidence: sparse.csr_matrix

    @cached_property
    def token_frequency(self) -> np.ndarray:
        """Share of the population whose name holds each token."""
        return np.asarray(self.incidence.T @ self.shares).ravel()

    def joint_frequency(self, rows: list[int], columns: list[int]) -> np.ndarray:
        """Share of the population whose name holds both token rows[i] and token columns[j]."""
        weighted = self.incidence[:, rows].multiply(self.shares[:, None]).tocsc()
        return np.asarray((weighted.T @ self.incidence[:, columns]).todense())

    def edge_tokens(self, q: int, end: bool) -> list[int]:
        """Tokens that can only open (or, with `end`, close) a name: padded q-grams. A name
        holds exactly one of each, so their encodings never occur together."""
        pad = " " * (q - 1)
        if not pad:
            return []
        return [
            i
            for i, token in enumerate(self.vocabulary)
            if (token.endswith(pad) if end else token.startswith(pad))
        ]


def build_table(counts: dict[str, float], tokenize: Tokenizer) -> NameTable:
    """A table from name -> count (any scale)."""
    names = sorted(counts)
    total = sum(counts.values())
    index: dict[str, int] = {}
    rows, cols = [], []
    for row, name in enumerate(names):
        for token in set(tokenize(name)):
            cols.append(index.setdefault(token, len(index)))
            rows.append(row)
    incidence = sparse.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(len(names), len(index))
    )
    shares = np.array([counts[name] / total for name in names])
    return NameTable(names, shares, list(index), incidence)


def _counts(name: str) -> dict[str, float]:
    counts: defaultdict[str, float] = defaultdict(float)
    for value, count in read_counts(name):
        counts[value] += count
    return counts


def surname_table(tokenize: Tokenizer) -> NameTable:
    """clkhash's surname list (about 6,700 names with counts)."""
    return build_table(_counts("last-names.csv"), tokenize)


def given_name_table(tokenize: Tokenizer) -> NameTable:
    """clkhash's male and female given-name lists, each sex weighted one half."""
    counts: defaultdict[str, float] = defaultdict(float)
    for table in ("male-first-names.csv", "female-first-names.csv"):
        sex = _counts(table)
        total = sum(sex.values())
        for name, count in sex.items():
            counts[name] += count / total / 2
    return build_table(counts, tokenize)
