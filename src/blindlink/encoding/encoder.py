"""Encoding a party's CSV into CLKs with clkhash, on every core, in a shuffled row order.

One pass over the file: the main process reads records and checks their shape and IDs, and the
encoding processes check each value against the schema as they encode it. The first problem in
file order is reported (file, line, column, field) and nothing is written.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from blindlink.encoding.blocking_keys import BlockingKeyMaker
from blindlink.encoding.clk_encoder import ClkEncoder, ValueProblem
from blindlink.encoding.csv_input import (
    ID_COLUMN,
    ColumnLayout,
    expected_records,
    read_layout,
    read_records,
)
from blindlink.encoding.encodings_file import EncodingsHeader, write_encodings
from blindlink.encoding.id_map import IdMap, write_id_map
from blindlink.encoding.schema import LinkageSchema, parse_schema
from blindlink.errors import InputError
from blindlink.hardening.steps import (
    apply_steps,
    encode_with_steps,
    encodings_id,
    output_bit_length,
)
from blindlink.matching.blocking import KeyBlocking

CHUNK_ROWS = 4000
SHUFFLE_ROWS = 65_536
# Below this many records a process pool costs more than it saves.
POOL_MIN_RECORDS = 20_000

Progress = Callable[[int], None]


@dataclass(frozen=True)
class EncodeResult:
    header: EncodingsHeader
    encodings_path: Path
    id_map_path: Path
    unused_columns: tuple[str, ...] = ()  # CSV columns the schema and the record ID do not use


class _ChunkEncoder:
    """One process's encoder: clkhash, then the agreement's hardening steps, then its blocking
    keys appended to each record."""

    def __init__(
        self,
        schema_document: dict[str, Any],
        secret: bytes,
        hardening: list[dict[str, Any]],
        blocking: KeyBlocking | None,
    ) -> None:
        self.schema = parse_schema(schema_document)
        self.secret = secret
        self.hardening = hardening
        self.clks = ClkEncoder(self.schema, secret)
        self.blocking = BlockingKeyMaker(blocking, self.schema, secret) if blocking else None

    def encode(self, rows: Sequence[Sequence[str]]) -> bytes | ValueProblem:
        if self.hardening and self.hardening[0]["kind"] == "salt":
            # Salting keys each record by its salt: check the values, then encode one group
            # per salt.
            problem = self.clks.check(rows)
            if problem is not None:
                return problem
            clks = encode_with_steps(rows, self.schema, self.secret, self.hardening)
        else:
            encoded = self.clks.encode(rows)  # checks every value
            if isinstance(encoded, ValueProblem):
                return encoded
            if not self.hardening and self.blocking is None:
                return encoded
            clks = np.frombuffer(encoded, dtype=np.uint8).reshape(len(rows), -1)
            if self.hardening:
                clks = apply_steps(clks, self.hardening, self.secret)
        if self.blocking is None:
            return clks.tobytes()
        keys = self.blocking.make(rows).astype("<u8").view(np.uint8)
        return np.hstack([clks, keys]).tobytes()


_worker_encoder: _ChunkEncoder | None = None


def _init_worker(*args: Any) -> None:
    global _worker_encoder
    _worker_encoder = _ChunkEncoder(*args)


def _encode_in_worker(rows: Sequence[Sequence[str]]) -> bytes | ValueProblem:
    assert _worker_encoder is not None, "worker initialiser did not run"
    return _worker_encoder.encode(rows)


def encode_rows(rows: Sequence[Sequence[str]], schema: LinkageSchema, secret: bytes) -> bytes:
    """Encode valid rows (schema column order) in this process, concatenated in row order."""
    encoded = ClkEncoder(schema, secret).encode(rows)
    if isinstance(encoded, ValueProblem):
        raise ValueError(f"row {encoded.row}, field '{encoded.field}': {encoded.message}")
    return encoded


@dataclass
class _Job:
    path: Path
    schema: LinkageSchema
    secret: bytes
    hardening: list[dict[str, Any]]
    blocking: KeyBlocking | None
    layout: ColumnLayout
    ids: list[str] = field(default_factory=list)

    def encoder_args(self) -> tuple[Any, ...]:
        return (self.schema.document, self.secret, self.hardening, self.blocking)


@dataclass(frozen=True)
class _Chunk:
    lines: list[int]
    rows: list[list[str]]


def _chunks(job: _Job) -> Iterator[_Chunk]:
    """The file's records in chunks; their IDs are collected in `job.ids`."""
    lines: list[int] = []
    rows: list[list[str]] = []
    for line, record_id, row in read_records(job.path, job.layout):
        job.ids.append(record_id)
        lines.append(line)
        rows.append(row)
        if len(rows) == CHUNK_ROWS:
            yield _Chunk(lines, rows)
            lines, rows = [], []
    if rows:
        yield _Chunk(lines, rows)


def _checked(job: _Job, lines: list[int], encoded: bytes | ValueProblem) -> bytes:
    if isinstance(encoded, ValueProblem):
        raise InputError(
            str(job.path),
            encoded.message,
            line=lines[encoded.row],
            column=job.layout.csv_column(encoded.column - 1),
            field=encoded.field,
        )
    return encoded


def _encode_parallel(job: _Job, workers: int, progress: Progress) -> Iterator[bytes]:
    initargs = job.encoder_args()
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=initargs) as pool:
        pending: deque[tuple[_Chunk, Future[bytes | ValueProblem]]] = deque()

        def collect() -> bytes:
            chunk, future = pending.popleft()
            encoded = _checked(job, chunk.lines, future.result())
            progress(len(chunk.rows))
            return encoded

        try:
            for chunk in _chunks(job):
                pending.append((chunk, pool.submit(_encode_in_worker, chunk.rows)))
                if len(pending) >= 2 * workers:
                    yield collect()
        except InputError:
            # Pending chunks come earlier in the file: a problem in them is reported first.
            while pending:
                collect()
            raise
        while pending:
            yield collect()


def _encode_serial(job: _Job, progress: Progress) -> Iterator[bytes]:
    encoder = _ChunkEncoder(*job.encoder_args())
    for chunk in _chunks(job):
        yield _checked(job, chunk.lines, encoder.encode(chunk.rows))
        progress(len(chunk.rows))


def encode_csv(
    path: Path,
    schema: LinkageSchema,
    secret: bytes,
    out: Path,
    id_map_out: Path,
    id_column: str = ID_COLUMN,
    workers: int | None = None,
    progress: Progress = lambda n: None,
    hardening: list[dict[str, Any]] | None = None,
    blocking: KeyBlocking | None = None,
    columns: Mapping[str, str] | None = None,
    shuffle_seed: int | None = None,
) -> EncodeResult:
    """Check and encode every record of `path`, apply the agreement's hardening steps, append
    its blocking keys to each record, and write the encodings file and the local ID map; raise
    InputError, writing nothing, at the first problem.

    Columns are matched by header name: `columns` maps schema fields to differently named CSV
    columns, `id_column` names the column with the record IDs (see csv_input.read_layout), and
    other columns are ignored.

    Rows are written in a random order so that a row reference reveals nothing about the
    record's position in the party's file. `shuffle_seed` makes that order reproducible, for
    benchmark and test data only: whoever knows the seed knows each row's position.
    """
    layout = read_layout(Path(path), schema, id_column, columns)
    job = _Job(Path(path), schema, secret, hardening or [], blocking, layout)
    if blocking is not None:
        BlockingKeyMaker(blocking, schema, secret)  # refuses keys on fields the schema lacks
        _check_key_columns(job)
    bit_length = output_bit_length(schema.bit_length, job.hardening)
    bit_length += 64 * len(blocking.keys) if blocking else 0
    workers = workers or os.cpu_count() or 1
    if workers > 1 and expected_records(job.path) >= POOL_MIN_RECORDS:
        parts = _encode_parallel(job, workers, progress)
    else:
        parts = _encode_serial(job, progress)
    origin = encodings_id(schema.sha256, job.hardening, blocking.document() if blocking else None)
    # Records are spooled to a temporary file next to the output in file order, then written
    # out shuffled: memory stays flat however large the file.
    with tempfile.TemporaryFile(dir=Path(out).parent) as spool:
        for part in parts:
            spool.write(part)
        spool.flush()
        seed = secrets.randbits(128) if shuffle_seed is None else shuffle_seed
        order = np.random.default_rng(seed).permutation(len(job.ids))
        header = write_encodings(out, bit_length, origin, _shuffled(spool, bit_length, order))
    ids = job.ids
    write_id_map(id_map_out, IdMap(header.content_sha256.hex(), [ids[i] for i in order]))
    return EncodeResult(header, Path(out), Path(id_map_out), layout.unused_columns)


def _check_key_columns(job: _Job) -> None:
    """A blocking key may use a field that is not hashed: the file must have its column."""
    assert job.blocking is not None
    for key in job.blocking.keys:
        for part in key:
            if job.layout.csv_column(job.schema.columns.index(part.field)) is None:
                raise InputError(
                    str(job.path),
                    "no column for this schema field, which a blocking key of the agreement "
                    "uses; name the column after the field or map it with "
                    "--column FIELD=CSVCOLUMN",
                    line=1,
                    field=part.field,
                )


def _shuffled(spool: IO[bytes], bit_length: int, order: np.ndarray) -> Iterator[bytes]:
    """The spooled records in `order`, a slice at a time."""
    if not len(order):
        return
    records = np.memmap(spool, dtype=np.uint8, mode="r", shape=(len(order), bit_length // 8))
    for start in range(0, len(order), SHUFFLE_ROWS):
        yield records[order[start : start + SHUFFLE_ROWS]].tobytes()
