"""A worker process spoken to in JSON lines over its stdin/stdout, with a deadline on every answer.

What runs in a worker may hang or die (a user's reward, a sympy check): the caller waits on the pipe with `select`,
which works in any thread, and a worker past its deadline is killed with its process group (SIGKILL), so nothing it
started outlives it. Used by task.reward (verify/user_reward.py), task=reasoning_gym's scoring and the symbolic answer
checks (verify/symbolic.py).
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from dynamo_cli.errors import DynamoError

START_TIMEOUT = 60.0  # seconds a worker may take to import what it needs and say it is ready
# Workers are started from this one thread, which lives as long as the process: Linux's parent-death signal
# (die_with_parent) fires when the *thread* that started a child ends, and the threads that ask for workers (a
# thread pool's, the collect thread) may end long before the trainer does.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dynamo-worker-spawner")


def _popen(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)


class JsonWorker:
    """One worker process; its first line is {"ready": true} or {"fatal": "<why>"} (then DynamoError)."""

    def __init__(self, argv: list[str], *, what: str):
        self.proc = _SPAWNER.submit(_popen, argv).result()
        self.buffer = b""
        try:
            hello = self.read(START_TIMEOUT)
        except (TimeoutError, EOFError, ValueError) as error:
            self.kill()
            raise DynamoError(f"{what} worker could not start: {type(error).__name__}: {error}") from error
        except BaseException:  # interrupted (a watchdog, Ctrl-C): no half-started worker is left behind
            self.kill()
            raise
        if "fatal" in hello:
            self.kill()
            raise DynamoError(f"{what} worker could not start: {hello['fatal']}")

    def read(self, timeout: float) -> dict:
        """The next line as JSON; TimeoutError past `timeout` seconds, EOFError when the worker exited."""
        deadline, fd = time.monotonic() + timeout, self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise EOFError(f"the worker exited (code {self.proc.poll()})")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def ask(self, request: dict, timeout: float) -> dict:
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and anything it started
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # EOF: the worker's loop ends
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
                return
        self.proc.stdout.close()



class WorkerSlots:
    """`count` workers of one command, each slot used by one thread at a time; a worker that ran past its deadline, died
    or answered garbage is killed, and the slot starts a fresh one on its next request. Used by task.reward and
    task=reasoning_gym's scoring."""

    def __init__(self, argv: list[str], *, what: str, count: int):
        self.argv, self.what = argv, what
        with ThreadPoolExecutor(count) as pool:  # started now, side by side: a worker that cannot start fails the run here
            starts = [pool.submit(JsonWorker, argv, what=what) for _ in range(count)]
        failed = [s.exception() for s in starts if s.exception() is not None]
        if failed:  # the others are not left running
            for start in starts:
                if start.exception() is None:
                    start.result().kill()
            raise failed[0]
        self.workers: list[JsonWorker | None] = [start.result() for start in starts]

    def __len__(self) -> int:
        return len(self.workers)

    def ask(self, slot: int, request: dict, timeout: float) -> tuple[dict | None, str | None]:
        """(the reply, None), or (None, "timeout" | an error line) when the slot's worker hung, died or broke its pipe."""
        try:
            if self.workers[slot] is None:
                self.workers[slot] = JsonWorker(self.argv, what=self.what)
            return self.workers[slot].ask(request, timeout), None
        except TimeoutError:
            self._drop(slot)
            return None, "timeout"
        except (EOFError, OSError, ValueError, DynamoError) as error:  # died, broken pipe, garbled reply, no restart
            self._drop(slot)
            return None, f"{type(error).__name__}: {error}"

    def _drop(self, slot: int) -> None:
        worker, self.workers[slot] = self.workers[slot], None
        if worker is not None:
            worker.kill()

    def close(self) -> None:
        for slot, worker in enumerate(self.workers):
            if worker is not None:
                worker.close()
            self.workers[slot] = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

def die_with_parent() -> None:
    """Linux: the kernel SIGKILLs this worker when its parent dies (the thread that started it: _SPAWNER's), even
    mid-computation (a check that runs for hours would otherwise outlive a trainer killed with SIGKILL). Elsewhere
    nothing: the closed stdin ends the worker's loop once it is idle."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
