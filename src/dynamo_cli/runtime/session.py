"""A recipe's run from start-up to shutdown: its processes, its run dir and (train) the run dir's lock.

    with RunSession(cfg.device, run_dir, lock=True) as session:   # start the processes, agree on the run dir, lock it
        tracker = session.own(Tracker(...))                        # closed when the session ends
        ...                                                        # the recipe
    # ends here however the block ends: what it owns closes once, last registered first, then the lock, then the processes

An orderly end is the block's normal end, or `Preempted` (every process decided to stop at the same point, after a
checkpoint). After any other error only what is this process's own is let go (the schedule's thread, the lock): the
other processes may be anywhere, so leaving the process group (a collective) is left to the launcher, which ends them
all, and a W&B run that `Tracker.close` would mark successful is left to W&B's exit hook, which marks it failed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from dynamo_cli.errors import DynamoError, Preempted, warn
from dynamo_cli.runtime.distributed import DataParallel
from dynamo_cli.runtime.runlock import RunLock


class RunSession:
    """`check_engine`: refuse an accelerate config whose sharding the recipe does not support (`fsdp2`: FSDP2 is
    supported); `lock`: one run per run dir (runtime/runlock.py), rank 0 holding the lock for all processes."""

    def __init__(self, device: str, run_dir: Path, *, check_engine: bool = True, fsdp2: bool = False, lock: bool = False):
        self.device, self.requested_dir = device, Path(run_dir)
        self.check_engine, self.fsdp2, self.take_lock = check_engine, fsdp2, lock
        self.dp: Optional[DataParallel] = None
        self.run_dir: Optional[Path] = None  # rank 0's run dir, the same on every process
        self.lock: Optional[RunLock] = None
        self._owned: list[tuple[Callable[[], Any], bool]] = []  # (close, also after an error)

    def __enter__(self) -> "RunSession":
        self.dp = DataParallel.start(self.device)
        if self.check_engine:
            self.dp.check_engine(fsdp2=self.fsdp2)
        self.run_dir = self.dp.agree_on_run_dir(self.requested_dir)
        if self.take_lock:
            self._acquire_lock()
        return self

    def _acquire_lock(self) -> None:
        refused = None
        if self.dp.is_main:  # rank 0 holds the lock for all processes
            try:
                self.lock = RunLock.acquire(self.run_dir)
            except DynamoError as error:
                refused = str(error)
        if refused := self.dp.broadcast_object(refused):  # every process stops, not only rank 0
            raise DynamoError(refused)
        if self.lock and self.lock.previous:
            warn(f"took over the stale lock of pid {self.lock.previous.get('pid')} on {self.lock.previous.get('host')} (not running)")

    def own(self, resource, *, after_error: bool = True):
        """Call `resource.close()` when the session ends (`after_error=False`: on an orderly end only). Returns `resource`."""
        self._owned.append((resource.close, after_error))
        return resource

    def __exit__(self, kind, error, traceback) -> None:
        orderly = error is None or isinstance(error, Preempted)
        owned, self._owned, failed = self._owned, [], None
        for close, after_error in reversed(owned):
            if orderly or after_error:
                try:
                    close()
                except Exception as close_error:  # noqa: BLE001 - the rest still close; the first error is raised below
                    failed = failed or close_error
        if self.lock:
            self.lock.release()
            self.lock = None
        if orderly and failed is None:
            self.dp.close()
        if orderly and failed is not None:
            raise failed  # after an error, the error that ended the run is the one to report
