"""Reading a party's CSV file: its encoding, header, each record's shape and record ID. The
values are checked against the linkage schema as they are encoded (encoding/clk_encoder.py).

Error messages name the file, line, column and field, and never repeat the offending value:
they may end up in logs or tickets, and the values are identity data.
"""

from __future__ import annotations

import codecs
import csv
from _csv import Reader
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from blindlink.encoding.schema import LinkageSchema
from blindlink.errors import InputError

# The column holding each record's ID unless a party names another.
ID_COLUMN = "id"


def check_utf8(path: Path) -> None:
    """Raise InputError naming the line and column of the first byte that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes fed to the decoder so far
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            # Bytes of a character split across blocks are held by the decoder and counted
            # in exc.start of the next block.
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                _raise_not_utf8(path, offset - pending + exc.start)
            offset += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        line, _ = _line_of(path, offset)
        raise InputError(
            str(path), "the file ends inside a multi-byte UTF-8 character", line=line
        ) from None


def _raise_not_utf8(path: Path, bad_offset: int) -> None:
    line, line_start = _line_of(path, bad_offset)
    raise InputError(
        str(path),
        "the file is not UTF-8 (save it as UTF-8 and try again)",
        line=line,
        column=bad_offset - line_start + 1,
    )


def _line_of(path: Path, byte_offset: int) -> tuple[int, int]:
    """1-based line number containing byte_offset, and the offset where that line starts."""
    with open(path, "rb") as f:
        data = f.read(byte_offset)
    return data.count(b"\n") + 1, data.rfind(b"\n") + 1


@dataclass(frozen=True)
class ColumnLayout:
    """Where a CSV file's values go: the column of each schema field (None for an ignored
    field the file has no column for, read as empty), the record ID's column, and the columns
    nothing reads."""

    width: int
    positions: tuple[int | None, ...]
    id_position: int
    id_column: str
    unused_columns: tuple[str, ...]

    def fields(self, row: list[str]) -> list[str]:
        """A record's values in schema field order."""
        if self.positions == tuple(range(self.width)):
            return row
        return [row[i] if i is not None else "" for i in self.positions]

    def csv_column(self, field_index: int) -> int | None:
        """The 1-based CSV column of the schema field at `field_index`."""
        position = self.positions[field_index]
        return None if position is None else position + 1


def read_layout(
    path: Path,
    schema: LinkageSchema,
    id_column: str = ID_COLUMN,
    columns: Mapping[str, str] | None = None,
) -> ColumnLayout:
    """Match the file's header to the schema: each field is read from the column of its name,
    or the column `columns` maps it to (field -> CSV column); the record ID from `id_column` (a
    CSV column, or a field `columns` maps). Extra columns are ignored, and so are ignored
    schema fields the file lacks."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "file not found")
    columns = dict(columns or {})
    unknown = [f for f in columns if f not in schema.columns]
    if unknown:
        raise InputError(
            str(path),
            f"the column mapping names {', '.join(unknown)}, which the schema does not have "
            f"(its fields: {', '.join(schema.columns)})",
        )
    try:
        with _csv_reader(path) as reader:
            header = next(reader, None)
    except csv.Error as exc:
        raise InputError(str(path), f"malformed CSV header: {exc}", line=1) from None
    if header is None:
        raise InputError(
            str(path),
            f"the file is empty; expected a header row naming the columns "
            f"{', '.join(schema.columns)}",
        )
    wanted = {field: columns.get(field, field) for field in schema.columns}
    id_source = columns.get(id_column, id_column)
    _check_header(path, header, schema, wanted, id_source)
    index = {name: i for i, name in enumerate(header)}
    used = {*wanted.values(), id_source}
    return ColumnLayout(
        width=len(header),
        positions=tuple(index.get(wanted[field]) for field in schema.columns),
        id_position=index[id_source],
        id_column=id_source,
        unused_columns=tuple(name for name in header if name not in used),
    )


def _check_header(
    path: Path, header: list[str], schema: LinkageSchema, wanted: dict[str, str], id_source: str
) -> None:
    """Every hashed field and the record ID have exactly one column in the header."""
    used = {*wanted.values(), id_source}
    duplicated = sorted({c for c in header if header.count(c) > 1 and c in used})
    if duplicated:
        raise InputError(
            str(path), f"header names column(s) {', '.join(duplicated)} more than once", line=1
        )
    hashed = [f.identifier for f in schema.fields if f.hashing is not None]
    missing = [field for field in hashed if wanted[field] not in header]
    problems = []
    if missing:
        named = [f"{f} (looked for '{wanted[f]}')" if wanted[f] != f else f for f in missing]
        if len(missing) == 1:
            what = "this schema field" + named[0].removeprefix(missing[0])
        else:
            what = f"schema fields {', '.join(named)}"
        problems.append(
            f"no column for {what}: name the column after the field or map it with "
            "--column FIELD=CSVCOLUMN"
        )
    if id_source not in header:
        problems.append(
            f"no record ID column '{id_source}': pass --id-column naming the column that "
            "holds each record's ID"
        )
    if problems:
        raise InputError(
            str(path),
            f"{'; '.join(problems)} (the header has {','.join(header)})",
            line=1,
            field=missing[0] if len(missing) == 1 else None,
        )


def read_records(path: Path, layout: ColumnLayout) -> Iterator[tuple[int, str, list[str]]]:
    """Yield (line where the record starts, record ID, values in schema field order) for every
    record, checking each record's shape and its ID; the values are checked by the encoder."""
    path = Path(path)
    seen: dict[str, int] = {}
    for line, row in _shaped_records(path, layout.width):
        record_id = row[layout.id_position]
        _check_id(path, line, record_id, layout.id_position + 1, layout.id_column, seen)
        yield line, record_id, layout.fields(row)
    if not seen:
        raise InputError(str(path), "the file has a header but no records")


def _check_id(
    path: Path, line: int, record_id: str, column: int, field: str, seen: dict[str, int]
) -> None:
    if not record_id:
        raise InputError(str(path), "record ID is empty", line=line, column=column, field=field)
    first = seen.setdefault(record_id, line)
    if first != line:
        raise InputError(
            str(path),
            f"duplicate record ID (first seen on line {first})",
            line=line,
            column=column,
            field=field,
        )


@contextmanager
def _csv_reader(path: Path) -> Iterator[Reader]:
    """A strict CSV reader over the file; a byte that is not UTF-8 is reported by position."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            yield csv.reader(f, strict=True)
    except UnicodeDecodeError:
        check_utf8(path)  # raises, naming the line and column of the first bad byte
        raise


def _shaped_records(path: Path, width: int) -> Iterator[tuple[int, list[str]]]:
    """The records after the header, each with the line it starts on; each has `width` fields."""
    with _csv_reader(path) as reader:
        line = 1
        try:
            next(reader)  # the header, read by read_layout
            line = reader.line_num + 1
            for row in reader:
                if row:
                    if len(row) != width:
                        raise InputError(
                            str(path), f"expected {width} fields, found {len(row)}", line=line
                        )
                    yield line, row
                line = reader.line_num + 1
        except csv.Error as exc:
            raise InputError(
                str(path), f"malformed CSV: {exc} (in the record starting on this line)", line=line
            ) from None


def expected_records(path: Path) -> int:
    """Lines after the header: what a progress bar can know before reading the records (a
    quoted line break makes it an over-estimate); 0 when the file cannot be read."""
    try:
        with open(path, "rb") as f:
            lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0
    return max(lines - 1, 0)
