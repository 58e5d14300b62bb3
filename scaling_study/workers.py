"""Worker names (host:pid:tag) and whether a worker's process still lives, so a dead one's lease is void."""

from __future__ import annotations

import os
import socket
import uuid


def worker_name() -> str:
    """host:pid:random — the host and pid let a restarted worker see that a dead one's lease is void."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def worker_alive(worker: str, host: str) -> bool:
    """False only when `worker` ran on `host` (this one) and its process is gone (so its lease is void)."""
    parts = worker.split(":")
    if len(parts) < 2 or parts[0] != host:
        return True
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True
