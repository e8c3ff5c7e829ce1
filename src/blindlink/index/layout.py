"""The standing custodian index on disk: one directory per custodian upload, named by its
upload ID, in the data directory's `index/`; after the custodian's updates, by its upload ID and
version (`index_name`), each version built from the one before it.

    manifest.json       what the index was built from and in which format (written last)
    encodings.npy       uint8 (records, bytes): the custodian's encodings in row order
    keys.npy            uint64 (records, keys): each record's blocking keys, 0 where it has none
    key<k>.values.npy   uint64: key k's distinct values (never 0), sorted
    key<k>.offsets.npy  int64 (values + 1): value i's records are rows[offsets[i]:offsets[i + 1]]
    key<k>.rows.npy     int64: custodian rows grouped by value, increasing within a value
    removed.npy         bool (records,): rows the custodian removed (versions after updates
                        only); their encodings and keys are zeros and no postings name them

Appended records get the rows after the last one, so row references stay valid across versions.

    partitions/<P>/<p>/ on a Dask cluster, partition p of P of the index (partitions.py)

Every array is an .npy file that runs memory-map. A directory is complete when it has its final
name: it is built under a temporary name and renamed into place once every file is on disk.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from blindlink.errors import BlindlinkError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENCODINGS = "encodings.npy"
KEYS = "keys.npy"
REMOVED = "removed.npy"
POSTINGS = ("values", "offsets", "rows")
PARTIAL_SUFFIX = ".partial"


class IndexUnusable(BlindlinkError):
    """An index directory is incomplete, from another format, or not the live upload's."""


def index_name(upload_id: str, version: int) -> str:
    """The directory name of version `version` of a custodian upload's index (0: as uploaded)."""
    return upload_id if version == 0 else f"{upload_id}.{version}"


def postings_file(key: int, part: str) -> str:
    """The file of one part (`POSTINGS`) of key `key`'s postings."""
    return f"key{key}.{part}.npy"


@dataclass(frozen=True)
class Manifest:
    """What an index was built from: the custodian upload (its ID and content hash) and the
    version its updates brought it to, its shape (`records` counts removed rows too), and the
    format it is written in."""

    upload_id: str
    content_sha256: str  # hex, the upload's
    records: int
    encoding_bytes: int
    key_count: int
    format_version: int = FORMAT_VERSION
    version: int = 0  # the custodian updates applied
    removed: int = 0  # rows removed by them

    def is_of(
        self,
        upload_id: str,
        content_sha256: bytes,
        records: int,
        key_count: int,
        version: int = 0,
    ) -> bool:
        """Whether this index was built from that upload, with `key_count` blocking keys, and
        brought to `version` (`records` rows) by its updates."""
        built_from = (self.upload_id, self.content_sha256, self.records, self.key_count)
        wanted = (upload_id, content_sha256.hex(), records, key_count)
        return built_from == wanted and self.version == version

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST
        path.write_text(json.dumps(asdict(self), sort_keys=True), encoding="utf-8")
        path.chmod(0o600)
        return path

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        """The directory's manifest; IndexUnusable if it has none, or one of another format."""
        try:
            data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexUnusable(f"{directory}: no readable manifest ({exc})") from None
        version = data.get("format_version") if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            raise IndexUnusable(f"{directory}: index format {version}, not {FORMAT_VERSION}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise IndexUnusable(f"{directory}: malformed manifest ({exc})") from None
