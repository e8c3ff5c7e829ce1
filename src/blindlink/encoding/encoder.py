"""Encoding a party's CSV into CLKs with clkhash, on every core, in a shuffled row order."""

from __future__ import annotations

import os
import secrets
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from clkhash import clk
from clkhash import schema as clkhash_schema
from clkhash.key_derivation import generate_key_lists

from blindlink.encoding.csv_input import iter_records, validate_csv
from blindlink.encoding.encodings_file import EncodingsHeader, write_encodings
from blindlink.encoding.id_map import IdMap, write_id_map
from blindlink.encoding.schema import LinkageSchema

CHUNK_ROWS = 4000
# Below this many records a process pool costs more than it saves.
POOL_MIN_RECORDS = 20_000

Progress = Callable[[int], None]


@dataclass(frozen=True)
class EncodeResult:
    header: EncodingsHeader
    encodings_path: Path
    id_map_path: Path


class _Hasher:
    """clkhash keys and schema for one process; keys are derived once, not per chunk."""

    def __init__(self, schema_document: dict[str, Any], secret: bytes) -> None:
        self.schema = clkhash_schema.from_json_dict(schema_document)
        self.keys = generate_key_lists(
            secret,
            len(self.schema.fields),
            key_size=self.schema.kdf_key_size,
            salt=self.schema.kdf_salt,
            info=self.schema.kdf_info,
            kdf=self.schema.kdf_type,
            hash_algo=self.schema.kdf_hash,
        )

    def encode(self, rows: Sequence[Sequence[str]]) -> bytes:
        clks, _ = clk.hash_chunk(rows, self.keys, self.schema, validate_data=False)
        return b"".join(c.tobytes() for c in clks)


_worker_hasher: _Hasher | None = None


def _init_worker(schema_document: dict[str, Any], secret: bytes) -> None:
    global _worker_hasher
    _worker_hasher = _Hasher(schema_document, secret)


def _encode_in_worker(rows: Sequence[Sequence[str]]) -> bytes:
    assert _worker_hasher is not None, "worker initialiser did not run"
    return _worker_hasher.encode(rows)


def encode_rows(rows: Sequence[Sequence[str]], schema: LinkageSchema, secret: bytes) -> bytes:
    """Encode rows in this process; the encodings concatenated in row order."""
    return _Hasher(schema.document, secret).encode(rows)


def _chunks(path: Path, schema: LinkageSchema) -> Iterator[list[list[str]]]:
    records = (row for _, row in iter_records(path, schema))
    while chunk := list(islice(records, CHUNK_ROWS)):
        yield chunk


def _encode_parallel(
    path: Path, schema: LinkageSchema, secret: bytes, workers: int, progress: Progress
) -> Iterator[bytes]:
    with ProcessPoolExecutor(
        workers, initializer=_init_worker, initargs=(schema.document, secret)
    ) as pool:
        pending: deque[Future[bytes]] = deque()
        for chunk in _chunks(path, schema):
            pending.append(pool.submit(_encode_in_worker, chunk))
            if len(pending) >= 2 * workers:
                yield _collect(pending.popleft(), schema, progress)
        while pending:
            yield _collect(pending.popleft(), schema, progress)


def _collect(future: Future[bytes], schema: LinkageSchema, progress: Progress) -> bytes:
    data = future.result()
    progress(len(data) // (schema.bit_length // 8))
    return data


def _encode_serial(
    path: Path, schema: LinkageSchema, secret: bytes, progress: Progress
) -> Iterator[bytes]:
    hasher = _Hasher(schema.document, secret)
    for chunk in _chunks(path, schema):
        progress(len(chunk))
        yield hasher.encode(chunk)


def encode_csv(
    path: Path,
    schema: LinkageSchema,
    secret: bytes,
    out: Path,
    id_map_out: Path,
    id_column: str = "id",
    workers: int | None = None,
    progress: Progress = lambda n: None,
) -> EncodeResult:
    """Validate `path`, then encode it (see `encode_validated`)."""
    ids = validate_csv(Path(path), schema, id_column).ids
    return encode_validated(path, ids, schema, secret, out, id_map_out, workers, progress)


def encode_validated(
    path: Path,
    ids: list[str],
    schema: LinkageSchema,
    secret: bytes,
    out: Path,
    id_map_out: Path,
    workers: int | None = None,
    progress: Progress = lambda n: None,
) -> EncodeResult:
    """Encode every record of a file `validate_csv` accepted (with record IDs `ids`), and write
    the encodings file and the local ID map.

    Rows are written in a random order so that a row reference reveals nothing about the
    record's position in the party's file.
    """
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(ids) >= POOL_MIN_RECORDS:
        parts = _encode_parallel(Path(path), schema, secret, workers, progress)
    else:
        parts = _encode_serial(Path(path), schema, secret, progress)
    encodings = np.frombuffer(b"".join(parts), dtype=np.uint8).reshape(len(ids), -1)
    order = np.random.default_rng(secrets.randbits(128)).permutation(len(ids))
    header = write_encodings(out, schema.bit_length, schema.sha256, [encodings[order].tobytes()])
    write_id_map(id_map_out, IdMap(header.content_sha256.hex(), [ids[i] for i in order]))
    return EncodeResult(header, Path(out), Path(id_map_out))
