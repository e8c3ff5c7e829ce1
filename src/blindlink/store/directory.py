"""A server's data directory: the files in it, and the lock by which one process owns it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import BinaryIO

from blindlink.errors import BlindlinkError

DATABASE_NAME = "blindlink.db"  # SQLite (WAL): projects, uploads, runs, matches, audit log
LOCK_NAME = "blindlink.lock"  # locked by the one process that owns the directory
ENCODINGS_DIR = "encodings"  # one <upload_id>.bin per committed upload with live encodings
# <upload_id>/ per custodian upload with live encodings in a project with blocking keys: its
# standing index (blindlink.index); anything else there is a crash's leftover, removed at start
INDEX_DIR = "index"
INCOMING_DIR = "incoming"  # uploads in progress; leftovers of a crash are removed at start
# Interrupted uploads kept so that their party can continue them: <project>.<party>.<sha256>,
# removed when committed, replaced, deleted with their project, or STAGED_TTL_S after their
# last write.
STAGED_DIR = "staged"
STAGED_TTL_S = 24 * 3600.0
SIGNING_KEY_NAME = "server-signing"  # .key signs the audit log; .pub verifies it


class DataDirInUse(BlindlinkError):
    """Another process (a running server) owns the data directory."""


def lock_data_dir(data_dir: Path) -> BinaryIO:
    """The open lock file, exclusively locked until closed (or the process dies);
    DataDirInUse if another process holds it."""
    lock = open(Path(data_dir) / LOCK_NAME, "a+b")  # noqa: SIM115 - the caller closes it
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise DataDirInUse(
            f"{data_dir} is in use by another process (a running server holds {LOCK_NAME}); "
            "stop it first"
        ) from None
    return lock


def data_dir_in_use(data_dir: Path) -> bool:
    """Whether another process (a running server) owns `data_dir` now."""
    try:
        lock_data_dir(data_dir).close()
    except DataDirInUse:
        return True
    return False


def make_private(data_dir: Path) -> None:
    """Directories 0700 and files 0600 under `data_dir`, whatever the umask: the data
    directory holds both parties' encodings, the audit log and the server's signing key."""
    os.chmod(data_dir, 0o700)
    for root, dirs, files in os.walk(data_dir):
        for name in dirs:
            os.chmod(Path(root) / name, 0o700)
        for name in files:
            os.chmod(Path(root) / name, 0o600)


def sync_to_disk(path: Path) -> None:
    """fsync the file or directory `path` (a directory: the names in it, after a rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
