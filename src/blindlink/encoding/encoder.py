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
from clkhash.key_derivation import generate_key_lists

from blindlink.encoding.csv_input import iter_records, validate_csv
from blindlink.encoding.encodings_file import EncodingsHeader, write_encodings
from blindlink.encoding.id_map import IdMap, write_id_map
from blindlink.encoding.schema import LinkageSchema, parse_schema
from blindlink.hardening.steps import encode_with_steps, encodings_id, output_bit_length

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
    """clkhash keys and schema for one process; keys are derived once, not per chunk. With
    hardening steps, encoding goes through them (salting keys records by their salt)."""

    def __init__(
        self,
        schema_document: dict[str, Any],
        secret: bytes,
        hardening: list[dict[str, Any]] | None = None,
    ) -> None:
        self.linkage_schema = parse_schema(schema_document)
        self.secret = secret
        self.hardening = hardening or []
        self.schema = self.linkage_schema.clkhash
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
        if self.hardening:
            return encode_with_steps(
                rows, self.linkage_schema, self.secret, self.hardening
            ).tobytes()
        clks, _ = clk.hash_chunk(rows, self.keys, self.schema, validate_data=False)
        return b"".join(c.tobytes() for c in clks)


_worker_hasher: _Hasher | None = None


def _init_worker(
    schema_document: dict[str, Any], secret: bytes, hardening: list[dict[str, Any]]
) -> None:
    global _worker_hasher
    _worker_hasher = _Hasher(schema_document, secret, hardening)


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


def _encode_parallel(path: Path, job: _Job, workers: int, progress: Progress) -> Iterator[bytes]:
    with ProcessPoolExecutor(
        workers, initializer=_init_worker, initargs=(job.schema.document, job.secret, job.hardening)
    ) as pool:
        pending: deque[tuple[Future[bytes], int]] = deque()
        for chunk in _chunks(path, job.schema):
            pending.append((pool.submit(_encode_in_worker, chunk), len(chunk)))
            if len(pending) >= 2 * workers:
                yield _collect(*pending.popleft(), progress)
        while pending:
            yield _collect(*pending.popleft(), progress)


def _collect(future: Future[bytes], rows: int, progress: Progress) -> bytes:
    data = future.result()
    progress(rows)
    return data


def _encode_serial(path: Path, job: _Job, progress: Progress) -> Iterator[bytes]:
    hasher = _Hasher(job.schema.document, job.secret, job.hardening)
    for chunk in _chunks(path, job.schema):
        progress(len(chunk))
        yield hasher.encode(chunk)


@dataclass(frozen=True)
class _Job:
    schema: LinkageSchema
    secret: bytes
    hardening: list[dict[str, Any]]


def encode_csv(
    path: Path,
    schema: LinkageSchema,
    secret: bytes,
    out: Path,
    id_map_out: Path,
    id_column: str = "id",
    workers: int | None = None,
    progress: Progress = lambda n: None,
    hardening: list[dict[str, Any]] | None = None,
) -> EncodeResult:
    """Validate `path`, then encode it (see `encode_validated`)."""
    ids = validate_csv(Path(path), schema, id_column).ids
    return encode_validated(
        path, ids, schema, secret, out, id_map_out, workers, progress, hardening
    )


def encode_validated(
    path: Path,
    ids: list[str],
    schema: LinkageSchema,
    secret: bytes,
    out: Path,
    id_map_out: Path,
    workers: int | None = None,
    progress: Progress = lambda n: None,
    hardening: list[dict[str, Any]] | None = None,
) -> EncodeResult:
    """Encode every record of a file `validate_csv` accepted (with record IDs `ids`), apply the
    agreement's hardening steps, and write the encodings file and the local ID map.

    Rows are written in a random order so that a row reference reveals nothing about the
    record's position in the party's file.
    """
    job = _Job(schema, secret, hardening or [])
    bit_length = output_bit_length(schema.bit_length, job.hardening)
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(ids) >= POOL_MIN_RECORDS:
        parts = _encode_parallel(Path(path), job, workers, progress)
    else:
        parts = _encode_serial(Path(path), job, progress)
    encodings = np.frombuffer(b"".join(parts), dtype=np.uint8).reshape(len(ids), -1)
    order = np.random.default_rng(secrets.randbits(128)).permutation(len(ids))
    origin = encodings_id(schema.sha256, job.hardening)
    header = write_encodings(out, bit_length, origin, [encodings[order].tobytes()])
    write_id_map(id_map_out, IdMap(header.content_sha256.hex(), [ids[i] for i in order]))
    return EncodeResult(header, Path(out), Path(id_map_out))
