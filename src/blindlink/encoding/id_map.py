"""The local ID map: row reference -> the party's own record ID. It never leaves the party."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from blindlink.errors import InputError


@dataclass(frozen=True)
class IdMap:
    """Record IDs by row reference, bound to the encodings file they describe."""

    content_sha256: str
    ids: list[str]

    def lookup(self, rows: list[int]) -> list[str]:
        """The IDs for released row references; refuses references outside the map."""
        bad = [r for r in rows if r >= len(self.ids)]
        if bad:
            raise InputError(
                "release",
                f"row reference {bad[0]} is outside the local ID map "
                f"({len(self.ids)} rows); is this the map of the uploaded file?",
            )
        return [self.ids[r] for r in rows]

    def extended(self, appended: IdMap) -> IdMap:
        """This map followed by `appended`'s rows: the custodian's map after an update appended
        `appended`'s encodings (their rows follow this map's last row). Removed rows keep their
        place and ID; no release names them again."""
        return IdMap(self.content_sha256, self.ids + appended.ids)


def read_row_references(path: Path) -> list[int]:
    """Row references from a text file, one a line (blank lines and lines starting with # are
    skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(str(path), "file of row references not found") from None
    except UnicodeDecodeError:
        raise InputError(str(path), "not UTF-8 text") from None
    rows = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if not text.isascii() or not text.isdigit():
            raise InputError(str(path), "not a row reference (a whole number >= 0)", line=number)
        rows.append(int(text))
    return rows


def write_id_map(path: Path, id_map: IdMap) -> None:
    tmp = Path(f"{path}.partial")
    tmp.write_text(
        json.dumps({"content_sha256": id_map.content_sha256, "ids": id_map.ids}), encoding="utf-8"
    )
    os.replace(tmp, path)


def read_id_map(path: Path) -> IdMap:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        return IdMap(str(document["content_sha256"]), [str(i) for i in document["ids"]])
    except FileNotFoundError:
        raise InputError(str(path), "ID map not found") from None
    except (ValueError, KeyError, TypeError):
        raise InputError(str(path), "not a blindlink ID map") from None
