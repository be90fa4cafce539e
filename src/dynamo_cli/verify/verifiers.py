"""Verifiers: completions and their problems -> rewards, and never an exception.

Every task provides one (`Task.verifier`): the built-in answer judge runs here, in this process (JudgeVerifier), except
its symbolic checks, which run in worker processes under the judge call's deadline (verify/symbolic.py);
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
from dynamo_cli.verify.deadline import VerifierTimeout, deadline, time_left
from dynamo_cli.verify.deadline import is_set as _deadline_set

log = logging.getLogger(__name__)
FAULT = Verdict(0.0, "none", None, status="error")  # what a completion whose verification failed scores


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


def fault_verdict(error: BaseException, where: str) -> Verdict:
    """What a completion whose verification raised or timed out scores: 0, saying which and why."""
    timeout = isinstance(error, (VerifierTimeout, TimeoutError))
    return Verdict(0.0, "none", None, status="timeout" if timeout else "error",
                   detail=f"{type(error).__name__}: {error}"[:300] + f" on {where}")


class Watchdog:
    """Interrupts a call that runs past `seconds` with VerifierTimeout, in this thread: a SIGALRM ticks every seconds/4
    while the watchdog is on (main thread only; elsewhere it never fires) and raises when the call that `start()`
    marked is older than `seconds`. A second layer for a judge's own Python code (a signal interrupts it between
    bytecodes); nothing relies on it: the built-in judges are bounded by construction but for their symbolic checks,
    which the deadline bounds in every thread. One timer per batch, not one per call: arming a timer per completion
    tripled the cost of judging."""

    def __init__(self, seconds: float):
        self.seconds, self.started, self.previous = seconds, None, None

    def start(self) -> None:
        self.started = time.monotonic()

    def stop(self) -> None:
        self.started = None

    def _fire(self, signum, frame) -> None:
        if self.started is None:
            return
        # the call's deadline (verify/deadline.py) when one is set, which a worker's start moves later; else `seconds`
        if (time_left() < 0) if _deadline_set() else (time.monotonic() - self.started > self.seconds):
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
    past `timeout` seconds scores 0 and is counted (a verifier fault must never end a run: it is one bad rollout). The
    deadline holds in any thread for the symbolic checks (worker processes); the main thread's watchdog adds a bound
    on the judge's own code."""

    def __init__(self, judge: Callable[[str, object], Verdict], *, timeout: float):
        self.judge, self.timeout = judge, timeout

    def __call__(self, completions: list[str], problems: list) -> Verification:
        out, first = Verification(verdicts=[]), None
        with Watchdog(self.timeout) as watchdog:
            for completion, problem in zip(completions, problems, strict=True):
                verdict, error = guarded(watchdog, self.timeout, self.judge, completion, problem)
                if isinstance(error, VerifierTimeout):
                    out.timeouts += 1
                    first = first or f"timed out after {self.timeout}s on {getattr(problem, 'id', '?')}"
                elif error is not None:
                    out.errors += 1
                    first = first or f"{type(error).__name__}: {error} on {getattr(problem, 'id', '?')}"
                out.verdicts.append(verdict if error is None else fault_verdict(error, getattr(problem, "id", "?")))
        warn_faults(out, first, source="verifier")
        return out


def guarded(watchdog: Watchdog, timeout: float, call: Callable, *args) -> tuple[object, Exception | None]:
    """(call(*args), None), or (None, the error) when it raised or ran past `timeout` seconds: under the deadline
    (symbolic checks, any thread) and the watchdog (the call's own code, main thread)."""
    try:  # the watchdog raises only between start() and stop(), inside this try
        watchdog.start()
        with deadline(timeout):
            result = call(*args)
        watchdog.stop()
        return result, None
    except Exception as error:  # any failure (VerifierTimeout included) is the caller's to score 0 and count, never fatal
        watchdog.stop()
        return None, error


def warn_faults(verification: Verification, first: str | None, *, source: str) -> None:
    """One warning per batch with faults (not one per completion: a broken verifier would flood the console)."""
    warn_counts({"rollout/reward_errors": verification.errors, "rollout/reward_timeouts": verification.timeouts}, first,
                total=len(verification.verdicts), source=source)


def warn_counts(faults: dict[str, float], first: str | None, *, total: int, source: str) -> None:
    errors, timeouts = int(faults.get("rollout/reward_errors", 0)), int(faults.get("rollout/reward_timeouts", 0))
    if errors or timeouts:
        log.warning("%s: %d errors, %d timeouts in %d completions, scored 0 (first: %s)", source, errors, timeouts, total, first)
