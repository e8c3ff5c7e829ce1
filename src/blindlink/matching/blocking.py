"""Blocking: which pairs of records the server compares.

Two methods, named in the agreement. LSH by bit sampling works from the encodings alone. Keyed
blocking keys are computed by each party from its records (encoding/blocking_keys.py): records
are compared when they share the key of at least one agreed combination of fields.

LSH: each of `bands` bands samples `bits_per_band` bit positions (chosen from a public seed in the
agreement; they reveal nothing the server does not hold already). Two records are compared when
their sampled bits agree in at least one band. A pair whose encodings differ in a fraction d of
their bits shares a band with probability 1 - (1 - (1 - d)^bits_per_band)^bands, so close pairs
nearly always meet and distant ones rarely do.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LshBlocking:
    bands: int
    bits_per_band: int
    seed: int

    def positions(self, bit_length: int) -> np.ndarray:
        """(bands, bits_per_band) bit positions, deterministic for the seed."""
        rng = np.random.default_rng(self.seed)
        return np.stack(
            [rng.choice(bit_length, self.bits_per_band, replace=False) for _ in range(self.bands)]
        )


@dataclass(frozen=True)
class KeyPart:
    """One field of a blocking key, whole or its first `prefix` characters."""

    field: str
    prefix: int | None = None


@dataclass(frozen=True)
class KeyBlocking:
    """Blocking on keys the parties compute: one per combination of fields, HMAC-keyed with
    their shared secret. The server sees only which records share a key."""

    keys: tuple[tuple[KeyPart, ...], ...]

    @classmethod
    def from_document(cls, keys: list[list[dict[str, Any]]]) -> KeyBlocking:
        return cls(tuple(tuple(KeyPart(p["field"], p.get("prefix")) for p in k) for k in keys))

    def document(self) -> list[list[dict[str, Any]]]:
        """The keys as the agreement writes them."""
        return [
            [{"field": p.field} | ({"prefix": p.prefix} if p.prefix else {}) for p in key]
            for key in self.keys
        ]

    def names(self) -> list[str]:
        """Each key's fields as the operator reads them, e.g. "surname[:3] + date_of_birth"."""
        return [
            " + ".join(p.field + (f"[:{p.prefix}]" if p.prefix else "") for p in key)
            for key in self.keys
        ]


Blocking = LshBlocking | KeyBlocking


def split_records(records: np.ndarray, blocking_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """Uploaded records (each an encoding followed by `blocking_keys` little-endian 64-bit
    keys) as encodings (records, bytes) and keys (records, blocking keys)."""
    width = records.shape[1] - 8 * blocking_keys
    keys = np.ascontiguousarray(records[:, width:]).view("<u8").astype(np.uint64)
    return np.ascontiguousarray(records[:, :width]), keys


@dataclass(frozen=True)
class KeyGroup:
    """The records of both parties that share one value of a blocking key (the value itself is
    not kept: it would identify the group across runs)."""

    requester: int
    custodian: int

    @property
    def comparisons(self) -> int:
        return self.requester * self.custodian


@dataclass(frozen=True)
class KeyLoad:
    """One blocking key's share of a run: its comparisons and its largest groups, by
    comparisons. For the operator only: group sizes reveal the other party's record counts."""

    key: str
    comparisons: int
    largest: tuple[KeyGroup, ...]


def custodian_key_counts(requester_keys: np.ndarray, custodian_keys: np.ndarray) -> np.ndarray:
    """Per requester record and agreed key (both parties' (records, keys) arrays, 0 where a
    record has none), how many custodian records have the record's value: int64 (records,
    keys), 0 where it has none. A custodian index reads them from its postings instead."""
    counts = np.zeros(requester_keys.shape, dtype=np.int64)
    for column in range(requester_keys.shape[1]):
        population = custodian_keys[:, column]
        values, sizes = np.unique(population[population != 0], return_counts=True)
        if not len(values):
            continue
        ours = requester_keys[:, column]
        where = np.minimum(np.searchsorted(values, ours), len(values) - 1)
        found = (values[where] == ours) & (ours != 0)
        counts[found, column] = sizes[where[found]]
    return counts


def key_loads(
    blocking: KeyBlocking, requester_keys: np.ndarray, custodian_counts: np.ndarray, top: int = 3
) -> list[KeyLoad]:
    """Per agreed key (a column of the requester's (records, keys) array, 0 where a record has
    none, and of `custodian_key_counts`), the comparisons it makes and its `top` largest
    groups. Read from the requester's side alone, in time that grows with the batch only."""
    loads = []
    for column, name in enumerate(blocking.names()):
        keys = requester_keys[:, column]
        present = np.flatnonzero(keys)
        _, first, counts_a = np.unique(keys[present], return_index=True, return_counts=True)
        counts_b = custodian_counts[present[first], column]
        shared = counts_b > 0
        sizes_a, sizes_b = counts_a[shared].astype(np.int64), counts_b[shared].astype(np.int64)
        products = sizes_a * sizes_b
        largest = np.argsort(-products, kind="stable")[:top]
        groups = tuple(KeyGroup(int(sizes_a[i]), int(sizes_b[i])) for i in largest)
        loads.append(KeyLoad(name, int(products.sum()), groups))
    return loads


def describe_key_loads(loads: list[KeyLoad]) -> str:
    """The loads in one line: per key its comparisons and largest groups as requester x
    custodian records with their share of all the run's comparisons."""
    total = max(sum(load.comparisons for load in loads), 1)
    return "; ".join(
        f"{load.key}: {load.comparisons:,} comparisons, largest groups "
        + (
            ", ".join(
                f"{g.requester}x{g.custodian} ({g.comparisons / total:.1%})" for g in load.largest
            )
            or "none"
        )
        for load in loads
    )


def band_keys(columns: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Per record, the sampled bits of one band packed into an integer key. `columns` is the
    encodings transposed (bytes, records), so that each sampled bit is read contiguously."""
    keys = np.zeros(columns.shape[1], dtype=np.uint64)
    for position in positions:
        bit = (columns[position // 8] >> np.uint8(7 - position % 8)) & np.uint8(1)
        keys = (keys << np.uint64(1)) | bit.astype(np.uint64)
    return keys


def band_pairs(
    keys_a: np.ndarray, keys_b: np.ndarray, slice_pairs: int = 8_000_000
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All (i, j) with keys_a[i] == keys_b[j], in slices of about `slice_pairs` pairs (a slice
    holds every pair of its requester rows), so that a large block never needs all its pairs in
    memory at once."""
    order_b = np.argsort(keys_b, kind="stable")
    sorted_b = keys_b[order_b]
    starts = np.searchsorted(sorted_b, keys_a, side="left")
    counts = np.searchsorted(sorted_b, keys_a, side="right") - starts
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    cuts = np.searchsorted(ends, np.arange(slice_pairs, total, slice_pairs))
    bounds = [0, *np.unique(cuts + 1).tolist(), len(keys_a)]
    for low, high in zip(bounds[:-1], bounds[1:], strict=True):
        if low >= high:
            continue
        part = counts[low:high]
        rows_a = np.repeat(np.arange(low, high), part)
        # Position of each pair within its block, then the matching index into sorted_b.
        offsets = np.arange(int(part.sum())) - np.repeat(np.cumsum(part) - part, part)
        yield rows_a, order_b[np.repeat(starts[low:high], part) + offsets]
