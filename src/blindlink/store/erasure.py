"""Erasing the records a custodian removed from the encodings files that hold them.

A custodian upload's rows live in its encodings file (rows 0 to count - 1), then in the files
its updates appended, in order (`stored_files`). A removed row is erased by overwriting its
whole record (the encoding and its blocking keys) with zeros in place, then writing the
erased payload's hash into the file's header, so that the file stays self-consistent.

The store records each file's erased hash when the update that removes rows from it commits
(computed from the file's verified content, `erased_hashes`), so the integrity check can verify
a file with the committed removals applied whether or not they were erased yet, and erasing is
idempotent: an erasure a crash interrupted is done again, to the same bytes, at the next start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from blindlink.encoding.encodings_file import (
    HEADER_SIZE,
    EncodingsHeader,
    iter_payload_chunks,
    pack_header,
    read_header,
)
from blindlink.errors import EncodingsFileError

_CHUNK_RECORDS = 1 << 16
_NONE = np.empty(0, np.int64)


@dataclasses.dataclass(frozen=True)
class StoredFile:
    """One encodings file of a custodian upload: its custodian rows are `first_row` on, one per
    record; `sha256`: what its payload hashes to with its records `applied` read as zeros (the
    committed removals it holds, once their erased hash is recorded; none before)."""

    path: Path
    first_row: int
    records: int
    sha256: bytes
    applied: np.ndarray

    def rows_in(self, rows: np.ndarray) -> np.ndarray:
        """Those of the custodian `rows` this file holds, as its own record numbers, sorted."""
        rows = np.asarray(rows, dtype=np.int64)
        mine = rows[(rows >= self.first_row) & (rows < self.first_row + self.records)]
        return np.sort(mine - self.first_row)


def committed_removals(conn: sqlite3.Connection, upload_id: str) -> np.ndarray:
    """The custodian rows the committed updates of a custodian upload removed."""
    rows = conn.execute(
        "SELECT removed_rows FROM custodian_updates WHERE upload_id=?", (upload_id,)
    ).fetchall()
    return np.concatenate([np.empty(0, np.int64), *(np.frombuffer(r, "<i8") for (r,) in rows)])


def stored_files(conn: sqlite3.Connection, encodings_dir: Path, upload_id: str) -> list[StoredFile]:
    """The encodings files of a custodian upload that are still held, in row order, with the
    hash the database (or for an appended file without an erased hash, its `custodian_updated`
    entry) records for each."""
    upload = conn.execute(
        "SELECT count, file, content_sha256, erased_sha256 FROM uploads WHERE upload_id=?",
        (upload_id,),
    ).fetchone()
    if upload is None:
        return []
    count, name, content, erased = upload
    files = [(name, count, erased or content, erased is not None)]
    for appended, name, erased, content in conn.execute(
        "SELECT c.appended, c.file, c.erased_sha256, (SELECT json_extract(a.details, "
        "'$.content_sha256') FROM audit_log a WHERE a.kind = 'custodian_updated' AND "
        "json_extract(a.details, '$.update_id') = c.update_id) FROM custodian_updates c "
        "WHERE c.upload_id=? AND c.appended > 0 ORDER BY c.version",
        (upload_id,),
    ):
        files.append((name, appended, erased or bytes.fromhex(content or ""), erased is not None))
    removed = committed_removals(conn, upload_id)
    stored, first_row = [], 0
    for name, records, sha256, erased in files:
        if name is not None:
            file = StoredFile(encodings_dir / name, first_row, records, sha256, _NONE)
            stored.append(
                dataclasses.replace(file, applied=file.rows_in(removed)) if erased else file
            )
        first_row += records
    return stored


def payload_hashes(path: Path, *zeroed: np.ndarray) -> tuple[EncodingsHeader, list[bytes]]:
    """The file's header, and per set of its records in `zeroed` the SHA-256 of its payload
    with those records read as zeros (one pass over the file, in chunks)."""
    header = read_header(path)
    digests = [hashlib.sha256() for _ in zeroed]
    start = 0
    for chunk in iter_payload_chunks(path, _CHUNK_RECORDS * header.record_bytes):
        records = np.frombuffer(chunk, dtype=np.uint8).reshape(-1, header.record_bytes)
        end = start + len(records)
        for digest, rows in zip(digests, zeroed, strict=True):
            local = rows[(rows >= start) & (rows < end)] - start
            if len(local):
                erased = records.copy()
                erased[local] = 0
                digest.update(erased.tobytes())
            else:
                digest.update(chunk)
        start = end
    return header, [digest.digest() for digest in digests]


def erased_hashes(files: Sequence[StoredFile], removed: np.ndarray) -> dict[Path, bytes]:
    """Per file holding one of the custodian rows `removed`, its payload's hash once they and
    the removals its hash applies already are erased; EncodingsFileError if a file's content
    does not match its recorded hash: altered or corrupt."""
    hashes = {}
    for stored in files:
        new = stored.rows_in(removed)
        if not len(new):
            continue
        _, (now, after) = payload_hashes(
            stored.path, stored.applied, np.union1d(stored.applied, new)
        )
        if now != stored.sha256:
            raise EncodingsFileError(
                f"{stored.path}: content hash does not match the recorded one (corrupt or "
                "altered); nothing was changed"
            )
        hashes[stored.path] = after
    return hashes


def erase_records(path: Path, rows: np.ndarray, sha256: bytes) -> bool:
    """Overwrite the file's records `rows` with zeros and write `sha256` (the erased payload's,
    from `erased_hashes`) into its header, each on disk before the next step; whether anything
    was left to do (False: erased already)."""
    header = read_header(path)
    size = header.record_bytes
    with open(path, "r+b") as f:
        held = [row for row in rows.tolist() if _read_record(f, row, size).any()]
        for row in held:
            f.seek(HEADER_SIZE + row * size)
            f.write(bytes(size))
        if not held and header.content_sha256 == sha256:
            return False
        f.flush()
        os.fsync(f.fileno())
        f.seek(0)
        f.write(pack_header(dataclasses.replace(header, content_sha256=sha256)))
        f.flush()
        os.fsync(f.fileno())
    return True


def still_held(path: Path, rows: np.ndarray) -> int:
    """How many of the file's records `rows` are not all zeros."""
    size = read_header(path).record_bytes
    with open(path, "rb") as f:
        return sum(bool(_read_record(f, row, size).any()) for row in rows.tolist())


def _read_record(f: BinaryIO, row: int, size: int) -> np.ndarray:
    f.seek(HEADER_SIZE + row * size)
    return np.frombuffer(f.read(size), dtype=np.uint8)
