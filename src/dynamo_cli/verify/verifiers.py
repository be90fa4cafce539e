"""Verifiers: completions and their problems -> rewards, and never an exception.

Every task provides one (`Task.verifier`): the built-in answer judge runs here, in this process (JudgeVerifier);
task=code runs each completion's program in a sandbox (tasks/code.py, verify/sandbox.py); task.reward=<module>:<function>
runs a user's function in worker processes (verify/user_reward.py). Whatever a verifier meets, a judge that raises or one
that hangs, that completion scores 0 and the fault is counted (rollout/reward_errors, rollout/reward_timeouts): one
bad completion never ends a run, and a run whose verifier keeps failing shows it in its metrics.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
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


class Watchdog:
    """Interrupts a call that runs past `seconds` with VerifierTimeout, in this thread: a SIGALRM ticks every seconds/4
    while the watchdog is on (main thread only; elsewhere it never fires) and raises when the call that `start()`
    marked is older than `seconds`. A judge is pure Python (regexes, sympy), which a signal interrupts between
    bytecodes. One timer per batch, not one per call: arming a timer per completion tripled the cost of judging."""

    def __init__(self, seconds: float):
        self.seconds, self.started, self.previous = seconds, None, None

    def start(self) -> None:
        self.started = time.monotonic()

    def stop(self) -> None:
        self.started = None

    def _fire(self, signum, frame) -> None:
        if self.started is not None and time.monotonic() - self.started > self.seconds:
            self.started = None
            raise VerifierTimeout

    def __enter__(self) -> "Watchdog":
        if self.seconds > 0 and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds / 4, self.seconds / 4)
        return self

    def __exit__(self, *exc) -> None:
        self.started = None
        if self.previous is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
            self.previous = None


class JudgeVerifier:
    """A task's own judge(completion, problem) -> Verdict, in this process, each call guarded: an exception or a call
    past `timeout` seconds scores 0 and is counted (a verifier fault must never end a run: it is one bad rollout)."""

    def __init__(self, judge: Callable[[str, object], Verdict], *, timeout: float):
        self.judge, self.timeout = judge, timeout

    def __call__(self, completions: list[str], problems: list) -> Verification:
        out, first = Verification(verdicts=[]), None
        with Watchdog(self.timeout) as watchdog:
            for completion, problem in zip(completions, problems, strict=True):
                verdict, error = self._judge(watchdog, completion, problem)
                if isinstance(error, VerifierTimeout):
                    out.timeouts += 1
                    first = first or f"timed out after {self.timeout}s on {getattr(problem, 'id', '?')}"
                elif error is not None:
                    out.errors += 1
                    first = first or f"{type(error).__name__}: {error} on {getattr(problem, 'id', '?')}"
                out.verdicts.append(verdict)
        warn_faults(out, first, source="verifier")
        return out

    def _judge(self, watchdog: Watchdog, completion: str, problem) -> tuple[Verdict, Exception | None]:
        try:  # the watchdog raises only between start() and stop(), inside this try
            watchdog.start()
            verdict = self.judge(completion, problem)
            watchdog.stop()
            return verdict, None
        except Exception as error:  # any judge failure (VerifierTimeout included) scores 0, counted, never fatal
            watchdog.stop()
            return FAULT, error


def warn_faults(verification: Verification, first: str | None, *, source: str) -> None:
    """One warning per batch with faults (not one per completion: a broken verifier would flood the console)."""
    if verification.errors or verification.timeouts:
        log.warning("%s: %d errors, %d timeouts in %d completions, scored 0 (first: %s)", source, verification.errors,
                    verification.timeouts, len(verification.verdicts), first)
