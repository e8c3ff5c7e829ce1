"""The encodings file: what a party uploads. Binary, self-describing, integrity-checked.

Layout (little-endian):
    magic          8 bytes   b"BLNKENC1"
    bit_length     u32       bits per record, a multiple of 8
    count          u64       number of records
    schema_sha256  32 bytes  how the records were made: the linkage schema's content hash, or
                             with hardening or blocking keys, the hash of it and them
    content_sha256 32 bytes  SHA-256 of the payload
    payload        count * bit_length / 8 bytes, records in row-reference order

A record is an encoding, followed by a 64-bit little-endian key for each blocking key the
agreement names (encoding/blocking_keys.py).

A party's row reference is an encoding's position in the payload. The file holds no IDs and no
plaintext; the mapping back to the party's IDs is the local ID map, which never leaves the party.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from blindlink.errors import EncodingsFileError

if TYPE_CHECKING:
    from hashlib import _Hash

MAGIC = b"BLNKENC1"
_HEADER = struct.Struct("<8sIQ32s32s")
HEADER_SIZE = _HEADER.size
_REHASH_BYTES = 1 << 20  # read size when re-hashing a kept payload


@dataclass(frozen=True)
class EncodingsHeader:
    bit_length: int
    count: int
    schema_sha256: str
    content_sha256: bytes

    @property
    def record_bytes(self) -> int:
        return self.bit_length // 8

    @property
    def payload_bytes(self) -> int:
        return self.count * self.record_bytes


def write_encodings(
    path: Path, bit_length: int, schema_sha256: str, chunks: Iterable[bytes]
) -> EncodingsHeader:
    """Write payload chunks to `path` atomically (temporary file, fsync, rename)."""
    _check_bit_length(bit_length)
    tmp = Path(f"{path}.partial")
    try:
        digest = stage_payload(tmp, 0, chunks)
        return finish_staged(tmp, path, bit_length, schema_sha256, digest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def staged_bytes(staged: Path) -> int:
    """The payload bytes a staging file holds (0 if there is none)."""
    try:
        return max(0, staged.stat().st_size - HEADER_SIZE)
    except FileNotFoundError:
        return 0


def stage_payload(staged: Path, offset: int, chunks: Iterable[bytes]) -> _Hash:
    """Write payload chunks into the staging file `staged` from payload byte `offset` on,
    keeping the bytes before it (offset 0 starts a new file), and return the SHA-256 state of
    the whole payload so far. Whatever arrived reaches the disk even when `chunks` breaks off,
    so an interrupted stream can continue from `staged_bytes(staged)`."""
    kept = staged_bytes(staged)
    if offset > kept:
        raise EncodingsFileError(
            f"cannot continue at byte {offset}: only {kept} bytes of this upload are kept"
        )
    digest = hashlib.sha256()
    with open(staged, "r+b" if offset else "wb") as f:
        if offset:
            f.seek(HEADER_SIZE)
            for start in range(0, offset, _REHASH_BYTES):
                digest.update(f.read(min(_REHASH_BYTES, offset - start)))
            f.truncate(HEADER_SIZE + offset)
        else:
            f.write(b"\0" * HEADER_SIZE)
        try:
            for chunk in chunks:
                digest.update(chunk)
                f.write(chunk)
        finally:
            f.flush()
            os.fsync(f.fileno())
    return digest


def finish_staged(
    staged: Path, path: Path, bit_length: int, schema_sha256: str, digest: _Hash
) -> EncodingsHeader:
    """Turn a complete staging file into the encodings file `path`: header, fsync, rename.
    `digest`: the payload's SHA-256 state from `stage_payload`."""
    record_bytes = _check_bit_length(bit_length)
    size = staged_bytes(staged)
    if size % record_bytes:
        raise EncodingsFileError(
            f"payload of {size} bytes is not a whole number of {bit_length}-bit encodings"
        )
    header = EncodingsHeader(bit_length, size // record_bytes, schema_sha256, digest.digest())
    with open(staged, "r+b") as f:
        f.write(pack_header(header))
        f.flush()
        os.fsync(f.fileno())
    os.replace(staged, path)
    return header


def _check_bit_length(bit_length: int) -> int:
    """Bytes per record; EncodingsFileError unless `bit_length` is a positive multiple of 8."""
    if bit_length <= 0 or bit_length % 8:
        raise EncodingsFileError(f"bit length must be a positive multiple of 8, not {bit_length}")
    return bit_length // 8


def pack_header(header: EncodingsHeader) -> bytes:
    return _HEADER.pack(
        MAGIC,
        header.bit_length,
        header.count,
        bytes.fromhex(header.schema_sha256),
        header.content_sha256,
    )


def read_header(path: Path) -> EncodingsHeader:
    """Read and sanity-check the header; the payload is verified by `read_payload`."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
    except FileNotFoundError:
        raise EncodingsFileError(f"{path}: file not found") from None
    if len(raw) < HEADER_SIZE or not raw.startswith(MAGIC):
        raise EncodingsFileError(f"{path}: not a blindlink encodings file")
    _, bit_length, count, schema_hash, content_hash = _HEADER.unpack(raw)
    if bit_length == 0 or bit_length % 8:
        raise EncodingsFileError(f"{path}: invalid bit length {bit_length}")
    header = EncodingsHeader(bit_length, count, schema_hash.hex(), content_hash)
    actual = os.path.getsize(path) - HEADER_SIZE
    if actual != header.payload_bytes:
        raise EncodingsFileError(
            f"{path}: truncated or padded: header promises {count} "
            f"encodings ({header.payload_bytes} bytes), file holds {actual}"
        )
    return header


def read_payload(path: Path) -> tuple[EncodingsHeader, bytes]:
    """Read the whole payload and check it against the header's content hash."""
    header = read_header(path)
    with open(path, "rb") as f:
        f.seek(HEADER_SIZE)
        payload = f.read()
    if hashlib.sha256(payload).digest() != header.content_sha256:
        raise EncodingsFileError(f"{path}: content hash mismatch; the file is corrupt")
    return header, payload


def read_records(path: Path) -> np.ndarray:
    """The file's records as a (records, bytes per record) array."""
    header, payload = read_payload(path)
    return np.frombuffer(payload, dtype=np.uint8).reshape(header.count, -1)


def iter_payload_chunks(path: Path, chunk_bytes: int, start: int = 0) -> Iterable[bytes]:
    """Yield the payload from byte `start` on, in chunks of at most chunk_bytes."""
    with open(path, "rb") as f:
        f.seek(HEADER_SIZE + start)
        yield from iter(lambda: f.read(chunk_bytes), b"")


def verify_payload(path: Path) -> EncodingsHeader:
    """The header, once the payload is checked against its content hash, reading the file in
    chunks (memory stays small whatever the file's size)."""
    header = read_header(path)
    digest = hashlib.sha256()
    for chunk in iter_payload_chunks(path, _REHASH_BYTES):
        digest.update(chunk)
    if digest.digest() != header.content_sha256:
        raise EncodingsFileError(f"{path}: content hash mismatch; the file is corrupt")
    return header


def import_clkhash_json(source: Path, out: Path, schema_sha256: str) -> EncodingsHeader:
    """Convert clkhash's JSON output ({"clks": [base64, ...]}) into an encodings file."""
    try:
        document = json.loads(Path(source).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EncodingsFileError(f"{source}: not a readable JSON file ({exc})") from None
    clks = document.get("clks") if isinstance(document, dict) else None
    if not isinstance(clks, list) or not clks:
        raise EncodingsFileError(
            f'{source}: expected a JSON object {{"clks": [...]}} with at least one encoding'
        )
    decoded = []
    for i, item in enumerate(clks):
        try:
            decoded.append(base64.b64decode(item, validate=True))
        except (TypeError, binascii.Error):
            raise EncodingsFileError(f"{source}: clks[{i}] is not valid base64") from None
    lengths = {len(d) for d in decoded}
    if len(lengths) != 1:
        raise EncodingsFileError(
            f"{source}: encodings have different lengths ({sorted(8 * n for n in lengths)} bits)"
        )
    return write_encodings(out, 8 * lengths.pop(), schema_sha256, decoded)
