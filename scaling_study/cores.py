"""How many torch threads a worker runs: the host's cores shared among the `study run` workers on it.

torch starts as many threads as there are cores in every process, so three workers on two cores
run six busy threads that spin against each other (a 20-job grid took 5x longer with 3 workers
than with 1). Each worker holds a lock on a file of its own in a folder per host and user, so
counting the files that are locked counts the live workers on this host, whatever database they
serve; a worker that died leaves an unlocked file, which the next count removes. A worker takes
its share of the cores before each job: `--threads` or $STUDY_THREADS say it instead.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no registry; each worker counts itself alone
    fcntl = None

THREADS_VARIABLE = "STUDY_THREADS"
REGISTRY_VARIABLE = "STUDY_WORKERS_DIR"  # another folder for the registry (tests, or a /tmp shared between hosts)


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS says, else 1): how many bootstrap
    chunks and figures run at once, and what the workers of a host share."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def registry_folder() -> Path:
    """The folder of this host's and user's worker files."""
    where = os.environ.get(REGISTRY_VARIABLE) or tempfile.gettempdir()
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(where) / f"scaling-study-workers-{uid}"


class HostSlot:
    """This worker's entry among the workers of this host: a file locked for as long as the process lives
    (the kernel drops the lock when it dies, however it dies)."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder or registry_folder()
        self.handle = None
        self.path: Path | None = None
        if fcntl is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            temp = self.folder / f".{name}"
            self.handle = open(temp, "w")
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.path = self.folder / name
            os.replace(temp, self.path)  # visible only once locked: a count never takes it for a dead one
        except OSError:  # no writable temp folder: this worker is not counted, and counts only itself
            self.close()

    def close(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> HostSlot:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def live_workers(folder: Path | None = None) -> int:
    """The workers running on this host (at least 1: the caller); the files of dead ones are removed."""
    folder = folder or registry_folder()
    if fcntl is None or not folder.is_dir():
        return 1
    live = 0
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue
        try:
            handle = open(path)
        except OSError:  # removed meanwhile
            continue
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                live += 1
                continue
            except OSError:
                continue
            path.unlink(missing_ok=True)  # its worker died without closing it
    return max(live, 1)


@dataclass(frozen=True)
class Threads:
    """The torch threads of one worker, and why that many (said in the worker's first line and each job's log)."""

    count: int
    why: str


def worker_threads(option: int | None = None, folder: Path | None = None) -> Threads:
    """`--threads` when given, else $STUDY_THREADS, else the usable cores divided among the live workers."""
    if option is not None:
        if option < 1:
            raise BadInput(f"--threads must be at least 1, not {option}")
        return Threads(option, "--threads")
    if raw := os.environ.get(THREADS_VARIABLE, "").strip():
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise BadInput(f"${THREADS_VARIABLE} is {raw!r}; give a whole number of threads, at least 1")
        return Threads(value, f"${THREADS_VARIABLE}")
    cores, workers = usable_cores(), live_workers(folder)
    return Threads(max(1, cores // workers), f"{cores} core(s) shared by {workers} worker(s) on this host")


def apply(threads: Threads) -> None:
    """Set torch's intra-op threads (the pool every CPU op uses) to `threads.count`."""
    import torch

    if torch.get_num_threads() != threads.count:
        torch.set_num_threads(threads.count)
