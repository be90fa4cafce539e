"""The deadline of a verification, in any thread: what a check may wait for before it scores 0.

A verifier sets it around each judge call (`with deadline(seconds):`); what can run long inside (a symbolic check,
verify/symbolic.py) waits for its worker process only `time_left()`. A context variable, so each thread (the
one-step-off-policy collect thread, the main thread) has its own. No imports of the rest of dynamo: worker
processes import this alone.
"""
from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from typing import Iterator, Optional

DEFAULT_TIMEOUT = 10.0  # seconds a check may take outside any verifier's deadline (task.reward_timeout's default)
_deadline: ContextVar[Optional[float]] = ContextVar("dynamo_verify_deadline", default=None)


class VerifierTimeout(Exception):
    """A verification ran past its deadline: the completion scores 0, counted in rollout/reward_timeouts."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """What runs in the block must be judged within `seconds` of its start."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Time spent in the block does not count against the innermost deadline (in this thread): what the check does not
    own, such as starting a worker process, is not its time. The main thread's watchdog reads the same deadline."""
    at = _deadline.get()
    if at is None:
        yield
        return
    start = time.monotonic()
    _deadline.set(float("inf"))
    try:
        yield
    finally:
        _deadline.set(at + (time.monotonic() - start))


def is_set() -> bool:
    return _deadline.get() is not None


def time_left() -> float:
    """Seconds left of the innermost deadline, or DEFAULT_TIMEOUT outside one."""
    at = _deadline.get()
    return DEFAULT_TIMEOUT if at is None else at - time.monotonic()
