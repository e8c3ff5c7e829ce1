"""Frequency attack on keyed blocking keys: label a name key's blocks by their sizes.

The server holds, for each agreed blocking key, which records share it, so it knows every
block's size. For a key made of names alone (given name, surname, or both, whole), block sizes
follow the names' population frequencies, which clkhash's public name tables give (given name
and surname taken as independent). The attack labels the k-th largest block with the k-th most
frequent name (or name pair): the largest blocks are the most common names, while for smaller
blocks sampling noise scrambles the order and the labels become guesswork. A label is
confident when the expected size of its name stands out from the next name's by three
standard deviations (Poisson).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

import numpy as np

from blindlink.attacks.name_tables import NameTable, given_name_table, surname_table
from blindlink.attacks.result import AttackResult
from blindlink.matching.blocking import KeyPart

NAME_TABLES: dict[str, Callable[..., NameTable]] = {
    "given_name": given_name_table,
    "surname": surname_table,
}
# Most frequent names per field considered, and name pairs labelled.
TOP_NAMES = 3000
TOP_LABELS = 200_000
CONFIDENCE_SIGMAS = 3.0


def attackable(key: Sequence[KeyPart]) -> bool:
    """Whether the public tables describe this key: one or two distinct name fields, whole."""
    fields = [part.field for part in key]
    return (
        0 < len(key) <= 2
        and len(set(fields)) == len(fields)
        and all(part.field in NAME_TABLES and not part.prefix for part in key)
    )


@cache
def _labels(key: tuple[KeyPart, ...]) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """The most frequent values of the key, most frequent first, and their population shares."""
    tables = [NAME_TABLES[part.field](lambda name: [name]) for part in key]
    tops = [np.argsort(-t.shares, kind="stable")[:TOP_NAMES] for t in tables]
    shares = tables[0].shares[tops[0]]
    for table, top in zip(tables[1:], tops[1:], strict=True):
        shares = np.outer(shares, table.shares[top]).ravel()
    order = np.argsort(-shares, kind="stable")[:TOP_LABELS]
    sizes = [len(top) for top in tops]
    labels = []
    for flat in order:
        indices = np.unravel_index(flat, sizes)
        labels.append(
            tuple(
                table.names[top[i]].casefold()
                for table, top, i in zip(tables, tops, indices, strict=True)
            )
        )
    return labels, shares[order]


def block_frequency_attack(
    keys: np.ndarray, truth: Sequence[tuple[str, ...]], key: Sequence[KeyPart]
) -> AttackResult:
    """Label the blocks of one key column (`keys`, uint64 per record, 0: no key) and score the
    labels against each record's true normalised values of the key's fields."""
    if not attackable(key):
        raise ValueError("the public name tables describe only keys of whole name fields")
    held = np.flatnonzero(keys)
    _, block, sizes = np.unique(keys[held], return_inverse=True, return_counts=True)
    labels, shares = _labels(tuple(key))
    expected = shares * len(held)
    gaps = expected - np.append(expected[1:], 0.0)
    confident_rank = gaps > CONFIDENCE_SIGMAS * np.sqrt(np.maximum(expected, 1.0))
    rank_of_block = np.full(len(sizes), -1)
    ranked = np.argsort(-sizes, kind="stable")[: len(labels)]
    rank_of_block[ranked] = np.arange(len(ranked))
    guesses = correct = confident = confident_correct = 0
    for record, b in zip(held.tolist(), block.tolist(), strict=True):
        rank = int(rank_of_block[b])
        if rank < 0:
            continue
        right = truth[record] == labels[rank]
        guesses += 1
        correct += right
        if confident_rank[rank]:
            confident += 1
            confident_correct += right
    return AttackResult(
        attack="block frequency (" + " + ".join(p.field for p in key) + ")",
        targets=len(held),
        guesses=guesses,
        correct=int(correct),
        confident=confident,
        confident_correct=int(confident_correct),
        chance_rate=float(shares[0]),
    )
