"""Graceful preemption: SLURM (and most schedulers) send SIGTERM, or SIGUSR1 with `--signal=USR1@<seconds>`, some
time before they kill a job. The handler only raises a flag; the training loop finishes the step it is in, every
process agrees (one is enough to have seen the signal), a checkpoint is written atomically, and the run exits
with trainer.preempt_exit_code. `trainer.resume=auto` then continues exactly, as after any checkpoint.
"""
from __future__ import annotations

import signal
from typing import Optional

from dynamo_cli.runtime.distributed import DataParallel


class Preemption:
    """Installs its handlers when built; `with Preemption(...)` gives the old ones back however the block ends."""

    def __init__(self, signals: list[str]):
        self.received: Optional[str] = None  # the name of the first preemption signal seen
        self._previous = {}
        for name in signals:
            number = getattr(signal, name)
            self._previous[number] = signal.signal(number, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = self.received or signal.Signals(signum).name

    def requested(self, dp: DataParallel) -> bool:
        """Did any process see a preemption signal? A collective: every process calls it at the same point."""
        return dp.sum(float(self.received is not None)) > 0

    def __enter__(self) -> "Preemption":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        """Give the signals back their previous handlers (a run inside a longer-lived process, e.g. a test)."""
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}
