"""Exceptions that carry a message a user can act on."""

from __future__ import annotations


class BlindlinkError(Exception):
    """Base for every error blindlink reports to a user."""


class InputError(BlindlinkError):
    """A party's input file is invalid: names the file and, where known, line, column and field."""

    def __init__(
        self,
        path: str,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.field = field
        self.reason = message
        where = [path]
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}")


class SchemaError(BlindlinkError):
    """A linkage schema is invalid or uses a key blindlink does not accept."""


class AgreementError(BlindlinkError):
    """A linkage agreement is malformed or inconsistent."""


class EncodingsFileError(BlindlinkError):
    """An encodings file is corrupt or does not match what was expected."""
