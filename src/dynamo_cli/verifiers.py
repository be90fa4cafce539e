"""Verifiers: completions and their problems -> rewards, and never an exception.

Every task provides one (`Task.verifier`): the built-in answer judge runs here, in this process (JudgeVerifier);
task=code runs each completion's program in a sandbox (tasks/code.py, sandbox.py); task.reward=<module>:<function>
runs a user's function in worker processes (user_reward.py). Whatever a verifier meets, a judge that raises or one
that hangs, that completion scores 0 and the fault is counted (rollout/reward_errors, rollout/reward_timeouts): one
bad completion never ends a run, and a run whose verifier keeps failing shows it in its metrics.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol

from dynamo_cli.tasks.answers import Verdict

log = logging.getLogger(__name__)
FAULT = Verdict(0.0, "none", None)  # what a completion whose verification failed scores


@dataclass
class Verification:
    """The verdicts of a batch of completions (in order) and the faults met on the way."""

    verdicts: list[Verdict]
    errors: int = 0  # completions whose verification raised: scored 0
    timeouts: int = 0  # completions whose verification ran past its time limit: scored 0
    counts: dict[str, float] = field(default_factory=dict)  # a verifier's own counts, e.g. rollout/sandbox_timeouts

    def metrics(self) -> dict[str, float]:
        return {"rollout/reward_errors": float(self.errors), "rollout/reward_timeouts": float(self.timeouts), **self.counts}


def add_metrics(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Counts of two batches (rounds, processes) added key by key."""
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in {**a, **b}}


class Verifier(Protocol):
    def __call__(self, completions: list[str], problems: list) -> Verification:
        """completions[r] is judged against problems[r]. Never raises on a completion's account."""


class VerifierTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise VerifierTimeout in this thread after `seconds` (SIGALRM: main thread only, elsewhere no limit).
    A judge is pure Python (regexes, sympy), which a signal interrupts between bytecodes."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise VerifierTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class JudgeVerifier:
    """A task's own judge(completion, problem) -> Verdict, in this process, each call guarded: an exception or a call
    past `timeout` seconds scores 0 and is counted (issue 15: a verifier fault is never fatal)."""

    def __init__(self, judge: Callable[[str, object], Verdict], *, timeout: float):
        self.judge, self.timeout = judge, timeout

    def __call__(self, completions: list[str], problems: list) -> Verification:
        out, first = Verification(verdicts=[]), None
        for completion, problem in zip(completions, problems, strict=True):
            try:
                with time_limit(self.timeout):
                    verdict = self.judge(completion, problem)
            except VerifierTimeout:
                out.timeouts += 1
                verdict, first = FAULT, first or f"timed out after {self.timeout}s on {getattr(problem, 'id', '?')}"
            except Exception as error:  # any judge failure scores 0, counted, never fatal
                out.errors += 1
                verdict, first = FAULT, first or f"{type(error).__name__}: {error} on {getattr(problem, 'id', '?')}"
            out.verdicts.append(verdict)
        warn_faults(out, first, source="verifier")
        return out


def warn_faults(verification: Verification, first: str | None, *, source: str) -> None:
    """One warning per batch with faults (not one per completion: a broken verifier would flood the console)."""
    if verification.errors or verification.timeouts:
        log.warning("%s: %d errors, %d timeouts in %d completions, scored 0 (first: %s)", source, verification.errors,
                    verification.timeouts, len(verification.verdicts), first)
