"""Building a custodian index from the custodian's encodings file, and its next version from an
update (appended records, removed rows), atomically and in memory bounded by a chunk of records
plus one key column (8 bytes a record) while its postings sort."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from blindlink.encoding.encodings_file import EncodingsHeader, iter_payload_chunks, read_header
from blindlink.errors import BlindlinkError, EncodingsFileError
from blindlink.index.layout import (
    ENCODINGS,
    KEYS,
    PARTIAL_SUFFIX,
    REMOVED,
    Manifest,
    postings_file,
)
from blindlink.store.directory import sync_to_disk

CHUNK_RECORDS = 1 << 16

log = logging.getLogger("blindlink.index")


def build_index(
    source: Path,
    upload_id: str,
    key_count: int,
    destination: Path,
    content_sha256: bytes | None = None,
) -> Manifest:
    """Index the encodings file `source` (custodian upload `upload_id`, whose records carry
    `key_count` blocking keys) at `destination`, which must not exist (see `write_atomically`).
    `content_sha256`: the upload's content hash as committed, which the manifest records
    (default: the file header's, which differs once removed rows were erased from the file)."""
    return write_atomically(
        destination,
        lambda partial: _write(source, upload_id, key_count, partial, content_sha256),
    )


def extend_index(
    parent: Path, appended: Path | None, removed: Sequence[int] | np.ndarray, destination: Path
) -> Manifest:
    """The next version of the index in `parent` at `destination`, which must not exist: the
    parent's rows, then the records of the encodings file `appended` (if any) as new rows, with
    rows `removed` (see `check_removals`) removed. Written in time proportional to all rows;
    the parent is only read."""
    rows = check_removals(parent, removed)
    return write_atomically(
        destination, lambda partial: _write_extended(parent, appended, rows, partial)
    )


class InvalidUpdate(BlindlinkError):
    """An update names rows it cannot remove."""


def check_removals(parent: Path, removed: Sequence[int] | np.ndarray) -> np.ndarray:
    """`removed` as rows, if each names a row of the index in `parent` that is not removed yet,
    once; InvalidUpdate otherwise."""
    records = Manifest.read(parent).records
    try:
        rows = np.asarray(removed, dtype=np.uint64).reshape(-1)
    except OverflowError:
        raise InvalidUpdate(
            f"row references are whole numbers from 0 to {records - 1}; nothing was changed"
        ) from None
    beyond = rows[rows >= records]
    if len(beyond):
        raise InvalidUpdate(
            f"row {beyond[0]} is not a custodian row (rows are 0 to {records - 1}); nothing "
            "was changed"
        )
    rows = rows.astype(np.int64)
    ordered = np.sort(rows)
    twice = ordered[1:][ordered[1:] == ordered[:-1]]
    if len(twice):
        raise InvalidUpdate(f"row {twice[0]} is named twice; nothing was changed")
    if (parent / REMOVED).exists():
        gone = rows[np.load(parent / REMOVED, mmap_mode="r")[rows]]
        if len(gone):
            raise InvalidUpdate(f"row {gone[0]} was removed already; nothing was changed")
    return rows


def write_atomically(destination: Path, write: Callable[[Path], Manifest]) -> Manifest:
    """An index `write` writes into a directory: written under a temporary name beside
    `destination`, synced, then renamed into place, so that `destination` is either absent or
    complete. A crash leaves only the temporary directory (its name ends in PARTIAL_SUFFIX),
    which the store removes at the next start."""
    started = time.monotonic()
    partial = destination.parent / f".{destination.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}"
    partial.mkdir(mode=0o700)
    try:
        manifest = write(partial)
        manifest.write(partial)
        for path in partial.iterdir():
            sync_to_disk(path)
        sync_to_disk(partial)
        os.rename(partial, destination)
        sync_to_disk(destination.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info(
        "custodian index of upload %s version %d built: %d records (%d removed), %d blocking "
        "keys, in %.1f s",
        manifest.upload_id[:12],
        manifest.version,
        manifest.records,
        manifest.removed,
        manifest.key_count,
        time.monotonic() - started,
    )
    return manifest


def _write(
    source: Path, upload_id: str, key_count: int, directory: Path, content_sha256: bytes | None
) -> Manifest:
    """The index's arrays in `directory`; the source's content is checked against its header
    while it is copied."""
    header = read_header(source)
    uploaded = content_sha256 or header.content_sha256
    encoding_bytes = _encoding_bytes(source, header, key_count)
    encodings = new_array(directory / ENCODINGS, np.uint8, (header.count, encoding_bytes))
    keys = new_array(directory / KEYS, np.uint64, (header.count, key_count))
    _copy_records(source, header, encodings, keys, 0)
    for key in range(key_count):
        _write_postings(np.array(keys[:, key]), key, directory)
    return Manifest(upload_id, uploaded.hex(), header.count, encoding_bytes, key_count)


def _write_extended(
    parent: Path, appended: Path | None, removed: np.ndarray, directory: Path
) -> Manifest:
    """The arrays of the parent's next version in `directory`. Removed rows keep their place,
    with zeros for encodings and keys (0: no key), so that no postings name them."""
    old = Manifest.read(parent)
    header = read_header(appended) if appended is not None else None
    added = 0
    if appended is not None and header is not None:
        added = header.count
        if _encoding_bytes(appended, header, old.key_count) != old.encoding_bytes:
            raise EncodingsFileError(f"{appended}: records of another size than the custodian's")
    records = old.records + added
    encodings = new_array(directory / ENCODINGS, np.uint8, (records, old.encoding_bytes))
    keys = new_array(directory / KEYS, np.uint64, (records, old.key_count))
    gone = new_array(directory / REMOVED, np.bool_, (records,))
    arrays = ((ENCODINGS, encodings), (KEYS, keys), (REMOVED, gone))
    for name, array in arrays:
        if (parent / name).exists():
            source = np.load(parent / name, mmap_mode="r")
            for start in range(0, old.records, CHUNK_RECORDS):
                end = min(start + CHUNK_RECORDS, old.records)
                array[start:end] = source[start:end]
    if appended is not None and header is not None:
        _copy_records(appended, header, encodings, keys, old.records)
    gone[removed] = True
    encodings[removed] = 0
    keys[removed] = 0
    for key in range(old.key_count):
        _write_postings(np.array(keys[:, key]), key, directory)
    return replace(old, records=records, version=old.version + 1, removed=int(gone.sum()))


def _encoding_bytes(source: Path, header: EncodingsHeader, key_count: int) -> int:
    encoding_bytes = header.record_bytes - 8 * key_count
    if encoding_bytes <= 0:
        raise EncodingsFileError(
            f"{source}: {header.bit_length}-bit records cannot hold {key_count} blocking keys"
        )
    return encoding_bytes


def _copy_records(
    source: Path, header: EncodingsHeader, encodings: np.memmap, keys: np.memmap, row: int
) -> None:
    """The source's records into `encodings` and `keys` from `row` on, its content checked
    against its header while it is copied."""
    encoding_bytes = encodings.shape[1]
    digest = hashlib.sha256()
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
