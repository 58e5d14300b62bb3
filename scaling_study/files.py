"""Files written whole or not at all (a reader, or a crash, never sees half of one), and where each job's live."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object], *, durable: bool = False) -> Path:
    """`write(temp)` creates the file under a temporary sibling name, then os.replace puts it in place.

    durable: fsync the file before the rename and its directory after, so that the new file,
    not the old one, survives a power cut (checkpoints, the progress of a long prepare).
    On any error the temporary file is removed and whatever stood at `path` is left intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name that `write` creates itself, so the file gets the usual permissions (mkstemp's are 0600)
    temp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        write(temp)
        if durable:
            _fsync(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    if durable:
        with contextlib.suppress(OSError):  # not every OS or file system can fsync a directory
            _fsync(path.parent)
    return path


def job_dir(runs_dir: Path, job: dict) -> Path:
    """Where a job keeps its checkpoint and log: runs/<study>-<key>/job-<id>.

    The key hashes the study's name and creation time, so the folder belongs to this database's
    study and no other: a new results.db (or another URL) with a study of the same name gets
    folders of its own, instead of resuming, or being refused by, checkpoints it never recorded.
    """
    from .checks import folder_name

    created = job["study_created_at"]
    key = hashlib.sha256(f"{job['study']}\0{created.isoformat()}".encode()).hexdigest()[:8]
    return Path(runs_dir) / f"{folder_name(job['study'])}-{key}" / f"job-{job['id']}"  # never outside runs_dir
