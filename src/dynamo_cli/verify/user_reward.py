"""Bring your own reward: task.reward=<module>:<function> scores completions with a user's code.

    def my_reward(completion: str, problem: dict) -> float      # problem: id, question, answer, level (+ a task's own)
    class MyVerifier:                                           # stateful: one instance per worker, built once
        def __init__(self): ...
        def __call__(self, completion: str, problem: dict) -> float: ...

`<module>` is an importable module (`my_pkg.rewards`) or a file (`/abs/or/relative/rewards.py`); with
task.reward_batched=true the function takes (completions, problems) lists and returns a list of floats.

The function runs in `task.workers` worker processes (`python -m dynamo_cli.verify.user_reward`), never in the trainer: a
call past task.reward_timeout seconds gets its worker killed (process group) and restarted, an exception, a
non-number, a non-finite value or a dead worker scores that completion 0 (a batch: every completion in it), and
each is counted (rollout/reward_timeouts, rollout/reward_errors); the run goes on. A path that does not import, a
missing name or a signature that cannot take (completion, problem) is a one-line error before the first step.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dynamo_cli.errors import DynamoError
from dynamo_cli.tasks.answers import Verdict
from dynamo_cli.verify.verifiers import FAULT, Verification, warn_faults
from dynamo_cli.verify.worker import WorkerSlots, die_with_parent


def resolve(spec: str) -> str:
    """`spec` with a file module made absolute (workers may start elsewhere); a dotted module as it is."""
    module, _, name = spec.rpartition(":")
    if module.endswith(".py") or os.sep in module:
        module = str(Path(module).expanduser().resolve())
    return f"{module}:{name}"


def load_reward(spec: str, *, batched: bool, shown: str | None = None) -> Any:
    """The function or class that `spec` names, its signature checked. DynamoError (one line, naming the spec as the
    user wrote it: `shown`) when it cannot be used."""
    module_name, _, name = spec.rpartition(":")
    where = f"task.reward={shown if shown is not None else spec!r}"
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise DynamoError(f"{where}: no such file {str(path)!r}")
            unique = f"dynamo_user_reward_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(unique, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[unique] = module  # dataclasses and pickling inside the user's module look themselves up here
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except DynamoError:
        raise
    except Exception as error:
        raise DynamoError(f"{where}: could not import {module_name!r}: {type(error).__name__}: {error}") from error
    if not hasattr(module, name):
        public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise DynamoError(f"{where}: {module_name!r} has no {name!r}; callables there: {', '.join(public) or 'none'}")
    target = getattr(module, name)
    check_signature(target, where=where, batched=batched)
    return target


def check_signature(target: Any, *, where: str, batched: bool) -> None:
    """A function taking (completion, problem), or a class built with no arguments whose instances take them."""
    wanted = "(completions, problems)" if batched else "(completion, problem)"
    call = target
    if inspect.isclass(target):
        try:
            inspect.signature(target).bind()
        except TypeError:
            raise DynamoError(f"{where}: class {target.__name__}{inspect.signature(target)} must be constructible with "
                              "no arguments (one instance is made per worker)") from None
        except ValueError:
            pass  # no signature to read (a builtin): trust it
        if not any("__call__" in vars(k) for k in target.__mro__):
            raise DynamoError(f"{where}: class {target.__name__} has no __call__{wanted}")
        call = target.__call__
        args: tuple = (None, [], []) if batched else (None, "", {})
    elif callable(target):
        args = ([], []) if batched else ("", {})
    else:
        raise DynamoError(f"{where}: {type(target).__name__} is not callable; expected a function or a class")
    try:
        signature = inspect.signature(call)
    except ValueError:
        return
    try:
        signature.bind(*args)
    except TypeError:
        raise DynamoError(f"{where}: {getattr(target, '__name__', target)}{signature} must take {wanted}") from None


def problem_dict(problem: Any) -> dict:
    """What a user's function receives: the problem's fields as a plain dict (id, question, answer, level, ...)."""
    return dataclasses.asdict(problem) if dataclasses.is_dataclass(problem) else dict(problem)


class UserReward:
    """A Verifier (verify/verifiers.py) that runs a user's reward in `workers` processes with a per-call `timeout`."""

    def __init__(self, spec: str, *, batched: bool, workers: int, timeout: float):
        self.spec, self.batched, self.timeout = resolve(spec), batched, timeout
        load_reward(self.spec, batched=batched, shown=spec)  # here first: a bad path or signature fails before any worker starts
        self.argv = [sys.executable, "-m", "dynamo_cli.verify.user_reward", self.spec, "batched" if batched else "single"]
        self.slots = WorkerSlots(self.argv, what="task.reward", count=workers)  # started now: fail at start
        self.lock = threading.Lock()

    def __call__(self, completions: list[str], problems: list) -> Verification:
        dicts = [problem_dict(p) for p in problems]
        n = len(completions)
        if self.batched:  # contiguous chunks, one per worker
            size = -(-n // len(self.slots)) if n else 1
            jobs = [range(lo, min(lo + size, n)) for lo in range(0, n, size)]
        else:
            jobs = [range(r, r + 1) for r in range(n)]
        verdicts: list[Verdict] = [FAULT] * n
        out = Verification(verdicts=verdicts)
        pending, firsts = iter(jobs), []

        def drain(slot: int) -> None:
            while True:
                with self.lock:
                    job = next(pending, None)
                if job is None:
                    return
                rewards, fault = self._run(slot, [completions[r] for r in job], [dicts[r] for r in job])
                with self.lock:
                    if fault == "timeout":
                        out.timeouts += len(job)
                    elif fault is not None:
                        out.errors += len(job)
                        firsts.append(fault)
                    failed = Verdict(0.0, "none", None, status="timeout" if fault == "timeout" else "error",
                                     detail=f"timed out after {self.timeout}s" if fault == "timeout" else fault)
                    for r, reward in zip(job, rewards, strict=True):
                        verdicts[r] = failed if reward is None else Verdict(reward, "reward_fn", None)

        with ThreadPoolExecutor(len(self.slots)) as pool:
            list(pool.map(drain, range(len(self.slots))))
        warn_faults(out, firsts[0] if firsts else (f"timed out after {self.timeout}s" if out.timeouts else None),
                    source=f"task.reward={self.spec}")
        return out

    def _run(self, slot: int, completions: list[str], problems: list[dict]) -> tuple[list, str | None]:
        """(rewards, None) or ([None]*n, "timeout" | an error line), restarting the slot's worker when it hung or died."""
        failed = [None] * len(completions)
        reply, fault = self.slots.ask(slot, {"completions": completions, "problems": problems}, self.timeout)
        if fault is not None:
            return failed, fault
        if "error" in reply:
            return failed, reply["error"]
        rewards = reply.get("rewards")
        if not isinstance(rewards, list) or len(rewards) != len(completions):
            return failed, f"returned {len(rewards) if isinstance(rewards, list) else rewards!r} rewards for {len(completions)} completions"
        bad = [r for r in rewards if not isinstance(r, (int, float)) or not math.isfinite(r)]
        if bad:
            return failed, f"returned a non-finite or non-number reward {bad[0]!r}"
        return [float(r) for r in rewards], None

    def close(self) -> None:
        self.slots.close()


def serve(spec: str, batched: bool) -> None:
    """A worker's loop: load the reward once (a class: one instance), then answer one request per stdin line."""
    die_with_parent()  # a hung reward must not outlive a trainer killed with SIGKILL
    out = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol's channel; the user's prints go to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(message: dict) -> None:
        out.write(json.dumps(message) + "\n")

    try:
        target = load_reward(spec, batched=batched)
        reward = target() if inspect.isclass(target) else target
    except BaseException as error:  # noqa: B902 - whatever stops the worker is reported, one line
        send({"fatal": f"{type(error).__name__}: {error}"})
        return
    send({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if batched:
                values = list(reward(request["completions"], request["problems"]))
            else:
                values = [reward(c, p) for c, p in zip(request["completions"], request["problems"], strict=True)]
            send({"rewards": [float(v) for v in values]})
        except Exception as error:
            send({"error": f"{type(error).__name__}: {error}"[:500]})


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2] == "batched")
