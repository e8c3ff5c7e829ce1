"""Encoding a party's records from Python: a DataFrame, rows or a CSV file, through the same
pipeline as `blindlink encode` (checks, clkhash encoding, hardening, blocking keys, shuffling).
"""

from __future__ import annotations

import csv
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from blindlink.agreement.model import Agreement
from blindlink.encoding.csv_input import ID_COLUMN
from blindlink.encoding.encoder import encode_csv
from blindlink.encoding.encodings_file import read_payload, write_encodings
from blindlink.encoding.id_map import IdMap, read_id_map, write_id_map
from blindlink.encoding.schema import LinkageSchema, load_schema
from blindlink.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

Cell = str | int | float | None
Row = Mapping[str, Cell] | Sequence[Cell]


@dataclass(frozen=True, eq=False)
class Encoded:
    """One party's encoded records, in the shuffled order an upload has, with the party's own
    record ID of each row. The IDs never leave the party; `save` writes them to a separate
    local ID map."""

    records: np.ndarray  # uint8 (records, bytes): each encoding, then its blocking keys
    ids: tuple[str, ...]
    key_count: int  # 64-bit blocking keys after each encoding
    origin: str  # the schema, hardening and blocking keys that made the encodings

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def encodings(self) -> np.ndarray:
        """The encodings alone: uint8 (records, bytes)."""
        return self.records[:, : self.records.shape[1] - 8 * self.key_count]

    @property
    def blocking_keys(self) -> np.ndarray | None:
        """The blocking keys, uint64 (records, keys); None without blocking keys."""
        if not self.key_count:
            return None
        width = self.records.shape[1] - 8 * self.key_count
        return np.ascontiguousarray(self.records[:, width:]).view("<u8").astype(np.uint64)

    def extended(self, appended: Encoded | None) -> Encoded:
        """These records followed by `appended` (as a custodian update leaves them)."""
        if appended is None:
            return self
        if (appended.origin, appended.records.shape[1]) != (self.origin, self.records.shape[1]):
            raise InputError("append", "records made otherwise than the custodian's")
        records = np.concatenate([self.records, appended.records])
        return Encoded(records, self.ids + appended.ids, self.key_count, self.origin)

    def save(self, encodings: str | os.PathLike[str], id_map: str | os.PathLike[str]) -> None:
        """Write the encodings file to upload and the local ID map to keep."""
        header = write_encodings(
            Path(encodings), self.records.shape[1] * 8, self.origin, [self.records.tobytes()]
        )
        write_id_map(Path(id_map), IdMap(header.content_sha256.hex(), list(self.ids)))


def encode(
    data: str | os.PathLike[str] | pd.DataFrame | Sequence[Row],
    schema: LinkageSchema | str | os.PathLike[str],
    secret: bytes,
    *,
    agreement: Agreement | None = None,
    id_column: str = ID_COLUMN,
    columns: Mapping[str, str] | None = None,
    workers: int | None = None,
) -> Encoded:
    """Check and encode records with `schema` and the parties' shared `secret`.

    `data` is a CSV file's path, a pandas DataFrame, or rows: mappings from column name to
    value, or sequences in the schema's column order. Columns are matched to the schema's
    fields by name, or as `columns` maps them (field -> column); `id_column` holds the record
    IDs; other columns are ignored. A missing value (None, NaN) is an empty one. With
    `agreement`, the records are encoded as it says (hardening steps, blocking keys) and it
    must name `schema`. Raises InputError at the first problem, naming the row (line of the
    CSV) and field.

    In-memory records pass through `blindlink encode`'s checks as a CSV file in a private
    temporary directory (readable by this user only), deleted before this returns.
    """
    schema = schema if isinstance(schema, LinkageSchema) else load_schema(Path(schema))
    if agreement is not None and agreement.schema_sha256 != schema.sha256:
        raise InputError("agreement", "the agreement names a different linkage schema")
    hardening = agreement.hardening if agreement else []
    keys = agreement.blocking_keys if agreement else None
    with tempfile.TemporaryDirectory(prefix="blindlink-") as scratch:
        work = Path(scratch)
        in_memory = not isinstance(data, str | os.PathLike)
        source = (
            Path(data)
            if isinstance(data, str | os.PathLike)
            else _written(data, schema.columns, work / "records.csv")
        )
        try:
            result = encode_csv(
                source,
                schema,
                secret,
                work / "encodings.bin",
                work / "ids.json",
                id_column,
                workers,
                hardening=hardening,
                blocking=keys,
                columns=columns,
            )
        except InputError as exc:
            raise _for_python(exc, in_memory) from None
        header, payload = read_payload(result.encodings_path)
        ids = read_id_map(result.id_map_path).ids
    records = np.frombuffer(payload, dtype=np.uint8).reshape(header.count, -1)
    return Encoded(records, tuple(ids), len(keys.keys) if keys else 0, header.schema_sha256)


def _written(data: pd.DataFrame | Sequence[Row], columns: list[str], path: Path) -> Path:
    """`path`, written as a CSV file of the records: with their own column names (a DataFrame's,
    the first mapping's keys), or, for sequences, the schema's `columns`."""
    if _is_dataframe(data):
        frame: pd.DataFrame = data  # type: ignore[assignment]
        header = [str(c) for c in frame.columns]
        rows: Sequence[Row] = frame.to_dict("records")  # type: ignore[assignment]
    else:
        rows = data  # type: ignore[assignment]
        first = rows[0] if len(rows) else None
        header = [str(c) for c in first] if isinstance(first, Mapping) else columns
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for number, row in enumerate(rows, start=1):
            writer.writerow(_ordered(row, header, number))
    return path


def _for_python(exc: InputError, in_memory: bool) -> InputError:
    """A problem told to a Python caller: with this function's arguments rather than the
    command line's flags and, for in-memory records, by row number (line 2 of the CSV written
    from them is row 1) rather than in a file the caller never saw."""
    reason = exc.reason.replace("--column FIELD=CSVCOLUMN", "columns={FIELD: COLUMN}")
    reason = reason.replace("--id-column", "id_column=")
    if not in_memory:
        return InputError(exc.path, reason, line=exc.line, column=exc.column, field=exc.field)
    reason = re.sub(r"\bline (\d+)", lambda m: f"row {int(m.group(1)) - 1}", reason)
    where = ""
    if exc.line == 1:
        where = "the columns: "
    elif exc.line is not None:
        where = f"row {exc.line - 1}: "
    return InputError("records", where + reason, field=exc.field)


def _is_dataframe(data: object) -> bool:
    return type(data).__module__.startswith("pandas") and hasattr(data, "to_dict")


def _ordered(row: Row, columns: list[str], number: int) -> list[str]:
    """A row's values as text, in the schema's column order."""
    if isinstance(row, Mapping):
        missing = [c for c in columns if c not in row]
        if missing:
            raise InputError("records", f"row {number} has no column '{missing[0]}'")
        values = [row[c] for c in columns]
    elif isinstance(row, str) or len(row) != len(columns):
        raise InputError(
            "records",
            f"row {number}: expected {len(columns)} values in the schema's column order "
            f"({', '.join(columns)})",
        )
    else:
        values = list(row)
    return [_text(v) for v in values]


def _text(value: Cell) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)
