"""Named moments where the kill-anywhere harness (tests/test_faults.py, bench/faults.py) can SIGKILL a run.

`DYNAMO_KILL_AT=<point>:<k>` in the environment makes the process SIGKILL itself the k-th time (1-based) it
reaches `<point>`; without it `reach` is a dictionary lookup. A SIGKILL cannot be caught, so what survives is
exactly what a real OOM kill or node loss would leave. The points: `checkpoint_write` (model files written,
trainer state and manifest not yet), `eval` (the evaluation computed, not yet logged), `step_end` (a step
logged, not yet checkpointed).
"""
from __future__ import annotations

import os
import signal

_TARGET = os.environ.get("DYNAMO_KILL_AT", "")
_POINT, _, _COUNT = _TARGET.partition(":")
_reached: dict[str, int] = {}


def reach(point: str) -> None:
    if point != _POINT:
        return
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] == int(_COUNT or 1):
        os.kill(os.getpid(), signal.SIGKILL)
