"""Building a custodian index from the custodian's encodings file, atomically and in memory
bounded by a chunk of records plus one key column (8 bytes a record) while its postings sort."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from blindlink.encoding.encodings_file import iter_payload_chunks, read_header
from blindlink.errors import EncodingsFileError
from blindlink.index.layout import (
    ENCODINGS,
    KEYS,
    PARTIAL_SUFFIX,
    Manifest,
    postings_file,
)

CHUNK_RECORDS = 1 << 16

log = logging.getLogger("blindlink.index")


def build_index(source: Path, upload_id: str, key_count: int, destination: Path) -> Manifest:
    """Index the encodings file `source` (custodian upload `upload_id`, whose records carry
    `key_count` blocking keys) at `destination`, which must not exist: written under a
    temporary name beside it, synced, then renamed into place, so that `destination` is either
    absent or complete. A crash leaves only the temporary directory (its name ends in
    PARTIAL_SUFFIX), which the store removes at the next start."""
    started = time.monotonic()
    manifest = write_atomically(
        destination, lambda partial: _write(source, upload_id, key_count, partial)
    )
    log.info(
        "custodian index of upload %s built: %d records, %d blocking keys, in %.1f s",
        upload_id[:12],
        manifest.records,
        key_count,
        time.monotonic() - started,
    )
    return manifest


def write_atomically(destination: Path, write: Callable[[Path], Manifest]) -> Manifest:
    """An index directory at `destination`, which must not exist, whose arrays `write` puts in
    the directory it is given: written under a temporary name beside it (ending in
    PARTIAL_SUFFIX), synced, its manifest last, then renamed into place."""
    partial = destination.parent / f".{destination.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}"
    partial.mkdir(mode=0o700)
    try:
        manifest = write(partial)
        manifest.write(partial)
        for path in partial.iterdir():
            _fsync(path)
        _fsync(partial)
        os.rename(partial, destination)
        _fsync(destination.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def _write(source: Path, upload_id: str, key_count: int, directory: Path) -> Manifest:
    """The index's arrays in `directory`; the source's content is checked against its header
    while it is copied."""
    header = read_header(source)
    encoding_bytes = header.record_bytes - 8 * key_count
    if encoding_bytes <= 0:
        raise EncodingsFileError(
            f"{source}: {header.bit_length}-bit records cannot hold {key_count} blocking keys"
        )
    encodings = new_array(directory / ENCODINGS, np.uint8, (header.count, encoding_bytes))
    keys = new_array(directory / KEYS, np.uint64, (header.count, key_count))
    digest = hashlib.sha256()
    row = 0
    for chunk in iter_payload_chunks(source, CHUNK_RECORDS * header.record_bytes):
        digest.update(chunk)
        records = np.frombuffer(chunk, dtype=np.uint8).reshape(-1, header.record_bytes)
        encodings[row : row + len(records)] = records[:, :encoding_bytes]
        keys[row : row + len(records)] = (
            np.ascontiguousarray(records[:, encoding_bytes:]).view("<u8").astype(np.uint64)
        )
        row += len(records)
    if digest.digest() != header.content_sha256:
        raise EncodingsFileError(f"{source}: content hash mismatch; the file is corrupt")
    encodings.flush()
    keys.flush()
    for key in range(key_count):
        _write_postings(np.array(keys[:, key]), key, directory)
    return Manifest(upload_id, header.content_sha256.hex(), header.count, encoding_bytes, key_count)


def _write_postings(column: np.ndarray, key: int, directory: Path) -> None:
    """Key `key`'s postings from its column of all records' values (0: no key)."""
    rows = np.flatnonzero(column)
    rows = rows[np.argsort(column[rows], kind="stable")]  # stable: rows increase within a value
    ordered = column[rows]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(rows) else rows
    parts = {
        "values": ordered[starts],
        "offsets": np.r_[starts, len(rows)].astype(np.int64),
        "rows": rows.astype(np.int64),
    }
    for part, array in parts.items():
        new_array(directory / postings_file(key, part), array.dtype, array.shape)[:] = array


def new_array(path: Path, dtype: np.dtype | type, shape: tuple[int, ...]) -> np.memmap:
    """A new .npy file of that shape, readable by the server's user only, memory-mapped for
    writing."""
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
