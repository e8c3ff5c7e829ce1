"""Reading a custodian index: a requester batch looks up its own key values in the postings and
is matched against the custodian records those point to, through the one decision pipeline.

Narrowing the custodian to the records sharing a key value with the batch changes no decision:
with blocking keys only pairs sharing a key value are compared, every custodian record with a
value the batch has is kept (so each key group, and the count of custodian records sharing a
batch record's key, is whole), and the kept rows stay in increasing order (so every tie broken
by custodian row is broken alike).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from blindlink.index.layout import (
    ENCODINGS,
    KEYS,
    POSTINGS,
    IndexUnusable,
    Manifest,
    postings_file,
)
from blindlink.matching.decision import Decisions
from blindlink.matching.engine import SharedEncodings
from blindlink.matching.executors import Executor


@dataclass(frozen=True)
class Postings:
    """One blocking key's postings: its distinct values (sorted), and per value the custodian
    rows that have it."""

    values: np.ndarray
    offsets: np.ndarray
    rows: np.ndarray

    def ranges(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per value in `wanted`, where its rows start and end in `rows` (equal if none)."""
        if not len(self.values):
            nothing = np.zeros(len(wanted), dtype=np.int64)
            return nothing, nothing
        at = np.minimum(np.searchsorted(self.values, wanted), len(self.values) - 1)
        found = self.values[at] == wanted
        return np.where(found, self.offsets[at], 0), np.where(found, self.offsets[at + 1], 0)

    def rows_in(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """The custodian rows in `rows[starts[i]:ends[i]]` for every i, in that order."""
        counts = ends - starts
        if not counts.sum():
            return np.empty(0, dtype=np.int64)
        within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.asarray(self.rows[np.repeat(starts, counts) + within], dtype=np.int64)


@dataclass(frozen=True)
class IndexedBatch:
    """A requester batch and the custodian records it shares a key value with: `shared`'s
    custodian row i is the custodian's row `custodian_rows[i]` (increasing). With `executor`
    (an index partitioned across workers, partitions.py) the custodian's encodings stay with
    the partitions: `shared.custodian` has a row per record but no bytes, and only `executor`
    matches the batch."""

    shared: SharedEncodings
    custodian_rows: np.ndarray
    executor: Executor | None = None
    # The index's encodings (memory-mapped), where `shared` holds none.
    index_encodings: np.ndarray | None = None

    def in_custodian_rows(self, decisions: Decisions) -> Decisions:
        """Decisions on `shared` with the custodian's own row references."""
        return replace(decisions, custodian_rows=self.custodian_rows[decisions.custodian_rows])

    def custodian_encodings(self, rows: np.ndarray) -> np.ndarray:
        """The encodings of `shared`'s custodian rows `rows`."""
        if self.index_encodings is None:
            return self.shared.custodian[rows]
        return np.asarray(self.index_encodings[self.custodian_rows[rows]])


class CustodianIndex:
    """An index opened for reading: every array memory-mapped, nothing loaded until a batch
    touches it."""

    def __init__(self, directory: Path) -> None:
        """Open the index in `directory`; IndexUnusable unless it is complete and its arrays
        have the shapes its manifest promises."""
        self.directory = directory
        self.manifest = manifest = Manifest.read(directory)
        try:
            self.encodings = np.load(directory / ENCODINGS, mmap_mode="r")
            self.keys = np.load(directory / KEYS, mmap_mode="r")
            self.postings = [
                Postings(
                    *(np.load(directory / postings_file(k, p), mmap_mode="r") for p in POSTINGS)
                )
                for k in range(manifest.key_count)
            ]
        except (OSError, ValueError) as exc:
            raise IndexUnusable(f"{directory}: unreadable index ({exc})") from None
        expected = (
            (manifest.records, manifest.encoding_bytes),
            (manifest.records, manifest.key_count),
        )
        if (self.encodings.shape, self.keys.shape) != expected or any(
            len(p.offsets) != len(p.values) + 1 for p in self.postings
        ):
            raise IndexUnusable(f"{directory}: arrays do not have the manifest's shapes")

    def candidate_rows(self, requester_keys: np.ndarray) -> np.ndarray:
        """The custodian rows (increasing) that share a value of at least one blocking key with
        a requester record; `requester_keys` is (records, keys), 0 where a record has none."""
        return self.look_up(requester_keys)[0]

    def look_up(self, requester_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`candidate_rows`, and per requester record and key how many custodian records have
        its value, read from the postings' offsets (as blocking.custodian_key_counts counts
        them among the records): one search of each key's postings for the batch's values."""
        found = [np.empty(0, dtype=np.int64)]
        counts = np.empty(requester_keys.shape, dtype=np.int64)
        for key, postings in enumerate(self.postings):
            values, inverse = np.unique(requester_keys[:, key], return_inverse=True)
            starts, ends = postings.ranges(values)  # 0, which no record has, finds none
            counts[:, key] = (ends - starts)[inverse]
            found.append(postings.rows_in(starts, ends))
        rows = np.sort(np.concatenate(found))
        # np.unique would hash first: ten times the time of a sort at a million rows.
        return (rows[np.r_[True, rows[1:] != rows[:-1]]] if len(rows) else rows), counts

    def batch(self, requester: np.ndarray, requester_keys: np.ndarray) -> IndexedBatch:
        """The batch (encodings, keys) against the custodian records it shares a key value
        with, read from the memory-mapped arrays; the counts of its key values from the
        postings."""
        rows, counts = self.look_up(requester_keys)
        shared = SharedEncodings(
            requester,
            np.ascontiguousarray(self.encodings[rows]),
            requester_keys,
            np.ascontiguousarray(self.keys[rows]),
            batch_key(self.manifest, requester, requester_keys),
            counts,
        )
        return IndexedBatch(shared, rows)


def batch_key(manifest: Manifest, requester: np.ndarray, requester_keys: np.ndarray) -> str:
    """The key by which workers cache their forms of a batch against an index. The custodian's
    part follows from its upload, its version and the batch's keys, so hashing those identifies
    the pair without hashing the records read, which grow with the key groups the batch hits."""
    digest = hashlib.sha256(f"{manifest.content_sha256}.{manifest.version}".encode())
    for array in (requester, requester_keys):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
