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
from blindlink.index.layout import MANIFEST, IndexUnusable, index_name
from blindlink.store.sqlite import CustodianUpdate, UploadRecord

log = logging.getLogger("blindlink.index")

# Indexes kept open between runs, the most recently used. A run reads pages spread over the
# whole index (at 10M custodian records, a 10,000-record batch touches most pages of its
# encodings): in an index opened afresh each such page costs a page fault, in one kept open
# only the first run's do (measured at 10M: 0.36 s against 0.24 s per batch).
OPEN_INDEXES = 4


class CustodianIndexes:
    """The indexes under `root` (the data directory's index/). Building, opening and retiring
    versions hold `lock`; so do a run between reading the committed updates and opening their
    version, and an update between its commit and retiring the version before it, so that a
    run never opens a version being retired."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.RLock()
        # By directory: the opened index and its files as they were when it was opened.
        self._opened: dict[Path, tuple[Files, CustodianIndex]] = {}

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
            index = self._kept_open(self.path(upload.upload_id, version))
        if not index.manifest.is_of(
            upload.upload_id, upload.content_sha256, records, key_count, version
        ):
            raise IndexUnusable(f"{index.directory}: built from other encodings")
        return index

    def _kept_open(self, path: Path) -> CustodianIndex:
        """The index in `path`, opened once and kept open while its files are the same (a
        directory rebuilt under the same name, or a file changed in it, is opened afresh and
        checked again); IndexUnusable as CustodianIndex raises it."""
        self.let_go_of_removed()
        files = _files(path)
        found = self._opened.pop(path, None)
        if found is None or found[0] != files:
            found = files, CustodianIndex(path)
        self._opened[path] = found
        while len(self._opened) > OPEN_INDEXES:
            del self._opened[next(iter(self._opened))]
        return found[1]

    def let_go_of_removed(self) -> None:
        """Close the indexes kept open whose directories were removed (retired versions,
        indexes deleted with their encodings), so that their files are freed once no run
        reads them."""
        with self.lock:
            for path in [p for p in self._opened if not (p / MANIFEST).exists()]:
                del self._opened[path]

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
        build_index(
            upload.path,  # type: ignore[arg-type]
            upload.upload_id,
            key_count,
            built,
            upload.content_sha256,
        )
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
            self._opened.pop(self.path(upload_id, version), None)


Files = tuple[tuple[str, int, int, int], ...]


def _files(directory: Path) -> Files:
    """Each file of `directory` (none if it is missing): its name, inode, size and time of
    last change."""
    try:
        found = [(path.name, path.stat()) for path in directory.iterdir()]
    except OSError:
        return ()
    return tuple(
        sorted((name, stat.st_ino, stat.st_size, stat.st_mtime_ns) for name, stat in found)
    )
