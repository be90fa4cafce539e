"""Symbolic answer checks (math-verify over sympy) in worker processes, under a deadline that holds in every thread.

sympy can run for hours on a short input (`\\binom{99999999}{49999999}` is a number with 30 million digits), and
nothing interrupts Python code in a thread that is not the main one: signals reach the main thread only, and the
one-step-off-policy schedule judges in its collect thread. So the check runs in a worker process: the caller waits on
a pipe with `select` (any thread), and a worker past the deadline is killed and replaced by the next call. Workers
start on the first symbolic check (math-verify's import, about a second, is paid there and not counted against any
deadline), are reused, and one is started per thread that checks at the same time.

The deadline is the one the verifier set around the judge call (verify/deadline.py; outside one DEFAULT_TIMEOUT). Only
`expression` answers that compare equal neither as text nor as rationals ever get here (tasks/answers.py): integer
and rational answers never leave the process.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading

from dynamo_cli.verify.deadline import VerifierTimeout, paused, time_left
from dynamo_cli.verify.worker import JsonWorker, die_with_parent

ARGV = [sys.executable, "-m", "dynamo_cli.verify.symbolic"]

def compare(predicted: str, reference: str) -> bool:
    """math-verify's verdict on two short formulas (in the worker). Junk that sympy chokes on is not a match."""
    try:
        from math_verify import parse, verify

        # math-verify's own timeouts are signal.alarm in this (main) thread; they are off: the caller's deadline
        # kills this whole process instead, which also stops a computation stuck in C code
        gold = parse(f"\\boxed{{{reference}}}", parsing_timeout=None)
        pred = parse(f"\\boxed{{{predicted}}}", parsing_timeout=None)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=None))
    except Exception:
        return False


class SymbolicPool:
    """Idle workers, taken by one check at a time; a worker that ran past a deadline, died or was interrupted is killed,
    never reused (its answer could still arrive and be read by the next check)."""

    def __init__(self):
        self.idle: list[JsonWorker] = []
        self.lock = threading.Lock()
        self.started = 0  # workers started so far (each kill costs one start)

    def check(self, predicted: str, reference: str) -> bool:
        """The verdict, or VerifierTimeout past the deadline (time_left()); an error of the worker itself raises. Starting
        a worker (math-verify's import) does not count against the deadline."""
        with paused():
            worker = self._take()
        left = time_left()
        try:
            if left <= 0:
                raise TimeoutError
            reply = worker.ask({"predicted": predicted, "reference": reference}, left)
        except TimeoutError:
            worker.kill()
            raise VerifierTimeout(f"symbolic check past its deadline ({predicted[:40]!r} vs {reference[:40]!r})") from None
        except BaseException:  # died, a broken pipe, or the caller interrupted (the main thread's watchdog): not reusable
            worker.kill()
            raise
        with self.lock:
            self.idle.append(worker)
        return bool(reply["match"])

    def _take(self) -> JsonWorker:
        """An idle worker, or a new one."""
        with self.lock:
            if self.idle:
                return self.idle.pop()
            self.started += 1
        return JsonWorker(ARGV, what="symbolic check")

    def warm(self) -> None:
        """Start one worker now (math-verify's import), so that the first check pays only its own time."""
        with self.lock:
            if self.idle:
                return
            self.started += 1
        worker = JsonWorker(ARGV, what="symbolic check")
        with self.lock:
            self.idle.append(worker)

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for worker in idle:
            worker.close()


POOL = SymbolicPool()
atexit.register(POOL.close)


def serve() -> None:
    """A worker's loop: one {"predicted", "reference"} per stdin line -> {"match": bool}."""
    die_with_parent()
    out = os.fdopen(os.dup(1), "w")  # the protocol's channel; anything a library prints goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # silences "timeout is disabled" on every call
    try:
        import math_verify  # noqa: F401 - the second-long import, before "ready"
    except BaseException as error:  # noqa: B902 - one line for the parent
        out.write(json.dumps({"fatal": f"{type(error).__name__}: {error}"}) + "\n")
        out.flush()
        return
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        out.write(json.dumps({"match": compare(request["predicted"], request["reference"])}) + "\n")
        out.flush()


if __name__ == "__main__":
    serve()
