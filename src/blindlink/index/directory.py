"""Where the custodian indexes live: one directory per custodian upload in the data directory's
`index/`, named by its upload ID and the version its updates brought it to (the store removes an
upload's index with its encodings, and at start-up any directory that is not a live custodian
upload's current version, such as one a crash left half-built or an update left uncommitted)."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from blindlink.index.build import build_index, extend_index
from blindlink.index.custodian import CustodianIndex
from blindlink.index.layout import IndexUnusable, index_name
from blindlink.store.sqlite import CustodianUpdate, UploadRecord

log = logging.getLogger("blindlink.index")


class CustodianIndexes:
    """The indexes under `root` (the data directory's index/). Building, opening and retiring
    versions hold `lock`; so do a run between reading the committed updates and opening their
    version, and an update between its commit and retiring the version before it, so that a
    run never opens a version being retired."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.RLock()

    def path(self, upload_id: str, version: int = 0) -> Path:
        return self.root / index_name(upload_id, version)

    def open(
        self, upload: UploadRecord, key_count: int, updates: Sequence[CustodianUpdate] = ()
    ) -> CustodianIndex:
        """The index of `upload`, whose records carry `key_count` blocking keys, as `updates`
        (all of its updates, in order) left it; IndexUnusable if there is none, or it is
        incomplete or was built from other data."""
        version = len(updates)
        records = upload.count + sum(update.appended for update in updates)
        with self.lock:
            index = CustodianIndex(self.path(upload.upload_id, version))
        if not index.manifest.is_of(
            upload.upload_id, upload.content_sha256, records, key_count, version
        ):
            raise IndexUnusable(f"{index.directory}: built from other encodings")
        return index

    def ensure(
        self, upload: UploadRecord, key_count: int, updates: Sequence[CustodianUpdate] = ()
    ) -> CustodianIndex:
        """The index of `upload` as `updates` left it, built first if it has none (an upload
        from before indexes) or its index is unusable: from the upload, then each update in
        turn."""
        with self.lock:
            try:
                return self.open(upload, key_count, updates)
            except IndexUnusable as why:
                path = self.path(upload.upload_id, len(updates))
                if path.exists():
                    log.warning("custodian index unusable, rebuilding it: %s", why)
                    shutil.rmtree(path)
                else:
                    log.info(
                        "upload %s has no custodian index yet; building it", upload.upload_id[:12]
                    )
            if upload.path is None:
                raise IndexUnusable(f"upload {upload.upload_id}: its encodings were deleted")
            self._rebuild(upload, key_count, updates)
            return self.open(upload, key_count, updates)

    def _rebuild(
        self, upload: UploadRecord, key_count: int, updates: Sequence[CustodianUpdate]
    ) -> None:
        built = self.path(upload.upload_id)
        shutil.rmtree(built, ignore_errors=True)
        build_index(upload.path, upload.upload_id, key_count, built)  # type: ignore[arg-type]
        for update in updates:
            following = self.path(upload.upload_id, update.version)
            shutil.rmtree(following, ignore_errors=True)
            extend_index(built, update.path, update.removed_rows, following)
            shutil.rmtree(built)
            built = following

    def extend(
        self,
        upload: UploadRecord,
        key_count: int,
        updates: Sequence[CustodianUpdate],
        appended: Path | None,
        removed: Sequence[int] | np.ndarray,
    ) -> Path:
        """Build the version after `updates` of the index of `upload`: its records, those of
        the encodings file `appended` and rows `removed` removed (InvalidUpdate if it cannot
        remove them). Runs keep reading the current version until the update is committed and
        they start after it."""
        parent = self.ensure(upload, key_count, updates).directory
        following = self.path(upload.upload_id, len(updates) + 1)
        shutil.rmtree(following, ignore_errors=True)  # an update that was not committed
        extend_index(parent, appended, removed, following)
        return following

    def retire(self, upload_id: str, version: int) -> None:
        """Remove version `version` of an upload's index (superseded, or never committed). A
        run that opened it keeps reading it: its files are memory-mapped."""
        with self.lock:
            shutil.rmtree(self.path(upload_id, version), ignore_errors=True)
