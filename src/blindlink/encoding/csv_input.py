"""Reading a party's CSV file: its encoding, header, each record's shape and record ID. The
values are checked against the linkage schema as they are encoded (encoding/clk_encoder.py).

Error messages name the file, line, column and field, and never repeat the offending value:
they may end up in logs or tickets, and the values are identity data.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from pathlib import Path

from blindlink.encoding.schema import LinkageSchema
from blindlink.errors import InputError


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


def read_records(
    path: Path, schema: LinkageSchema, id_column: str
) -> Iterator[tuple[int, str, list[str]]]:
    """Yield (line where the record starts, record ID, fields) for every record, checking the
    file, its header, each record's shape and its ID; the values are checked by the encoder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "file not found")
    if id_column not in schema.columns:
        raise InputError(
            str(path),
            f"the ID column '{id_column}' is not in the schema; add it "
            "as an ignored feature or pass --id-column",
        )
    id_index = schema.columns.index(id_column)
    seen: dict[str, int] = {}
    try:
        for line, row in _shaped_records(path, schema):
            record_id = row[id_index]
            _check_id(path, line, record_id, id_index + 1, id_column, seen)
            yield line, record_id, row
    except UnicodeDecodeError:
        check_utf8(path)  # raises, naming the line and column of the first bad byte
        raise
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


def _shaped_records(path: Path, schema: LinkageSchema) -> Iterator[tuple[int, list[str]]]:
    width = len(schema.columns)
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, strict=True)
        line = 1
        try:
            header = next(reader, None)
            if header is None:
                raise InputError(
                    str(path),
                    "the file is empty; expected a header row naming "
                    f"the columns {', '.join(schema.columns)}",
                )
            _check_header(path, header, schema)
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


def _check_header(path: Path, header: list[str], schema: LinkageSchema) -> None:
    expected = schema.columns
    if header == expected:
        return
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise InputError(
            str(path), f"header names column(s) {', '.join(duplicated)} more than once", line=1
        )
    missing = [c for c in expected if c not in header]
    unexpected = [c for c in header if c not in expected]
    if missing:
        problem = f"missing column(s) {', '.join(missing)}"
    elif unexpected:
        problem = f"unexpected column(s) {', '.join(unexpected)}"
    else:
        problem = "columns are in a different order"
    raise InputError(
        str(path),
        f"header does not match the schema: {problem}; expected {','.join(expected)}",
        line=1,
    )


def expected_records(path: Path) -> int:
    """Lines after the header: what a progress bar can know before reading the records (a
    quoted line break makes it an over-estimate); 0 when the file cannot be read."""
    try:
        with open(path, "rb") as f:
            lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0
    return max(lines - 1, 0)
