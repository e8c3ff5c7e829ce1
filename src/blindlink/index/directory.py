"""Where the custodian indexes live: one directory per custodian upload, named by its upload ID,
in the data directory's `index/` (the store removes an upload's index with its encodings, and at
start-up any directory that is not a live custodian upload's, such as one a crash left
half-built)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from blindlink.index.build import build_index
from blindlink.index.custodian import CustodianIndex
from blindlink.index.layout import IndexUnusable
from blindlink.store.sqlite import UploadRecord

log = logging.getLogger("blindlink.index")


class CustodianIndexes:
    """The indexes under `root` (the data directory's index/)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, upload_id: str) -> Path:
        return self.root / upload_id

    def open(self, upload: UploadRecord, key_count: int) -> CustodianIndex:
        """The index of `upload`, whose records carry `key_count` blocking keys; IndexUnusable
        if there is none, or it is incomplete or was built from other data."""
        index = CustodianIndex(self.path(upload.upload_id))
        if not index.manifest.is_of(
            upload.upload_id, upload.content_sha256, upload.count, key_count
        ):
            raise IndexUnusable(f"{index.directory}: built from other encodings")
        return index

    def ensure(self, upload: UploadRecord, key_count: int) -> CustodianIndex:
        """The index of `upload`, built first if it has none (an upload from before indexes)
        or its index is unusable."""
        try:
            return self.open(upload, key_count)
        except IndexUnusable as why:
            path = self.path(upload.upload_id)
            if path.exists():
                log.warning("custodian index unusable, rebuilding it: %s", why)
                shutil.rmtree(path)
            else:
                log.info("upload %s has no custodian index yet; building it", upload.upload_id[:12])
        if upload.path is None:
            raise IndexUnusable(f"upload {upload.upload_id}: its encodings were deleted")
        build_index(upload.path, upload.upload_id, key_count, self.path(upload.upload_id))
        return self.open(upload, key_count)
