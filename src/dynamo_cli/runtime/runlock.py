"""One run per run dir: `<run dir>/run.lock`, held with an exclusive flock and naming its owner's host and pid.

Two `dynamo train` processes in one dir would interleave metrics.jsonl and overwrite each other's checkpoints.
The kernel drops a flock when its process dies, however it dies (SIGKILL, OOM, node reboot of a local disk), so
a lock left by a dead run is stale by construction and the next run takes it over; a live owner refuses the
second run with one line. The pid and host in the file are for the message (and for a human with `cat`).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from dynamo_cli.errors import DynamoError

LOCK_FILE = "run.lock"
_HELD: dict[Path, "RunLock"] = {}  # the locks this process holds, by path


class RunLock:
    def __init__(self, fd: int, path: Path, previous: Optional[dict]):
        self.fd, self.path = fd, path
        self.previous = previous  # the owner a stale lock named (None: there was none)

    @classmethod
    def acquire(cls, run_dir: Path) -> "RunLock":
        """Take the run dir's lock, or raise DynamoError naming the live owner."""
        path = Path(run_dir) / LOCK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.resolve() in _HELD:  # an earlier run in this process (runs in one process are sequential) is over
            _HELD.pop(path.resolve()).release()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        previous = owner(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            who = f"pid {previous['pid']} on {previous['host']}" if previous else "another process"
            raise DynamoError(f"{run_dir} is in use by a live run ({who}, see {path}): wait for it to end, "
                              "or choose another hydra.run.dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": round(time.time(), 3)}).encode(), 0)
        os.fsync(fd)
        lock = cls(fd, path, previous if previous and previous.get("pid") != os.getpid() else None)
        _HELD[path.resolve()] = lock
        return lock

    def release(self) -> None:
        _HELD.pop(self.path.resolve(), None)
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def owner(path: Path) -> Optional[dict]:
    """The host and pid a lock file names (None: no file, or empty)."""
    try:
        return json.loads(Path(path).read_text()) or None
    except (OSError, ValueError):
        return None
