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
