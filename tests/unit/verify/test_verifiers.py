"""Verification deadlines hold in every thread: a symbolic check that would run for hours scores 0 within the deadline,
counted, in the main thread and in the collect thread of one-step-off-policy (where no signal can interrupt it), and
the common path (literal answers, text-equal expressions) never leaves the process."""
from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import psutil
import pytest
import torch

from dynamo_cli.rollout.episodes import MultiTurnEpisodes, score
from dynamo_cli.tasks.answers import judge
from dynamo_cli.tasks.base import Problem
from dynamo_cli.tasks.calc import CalcEnvironment
from dynamo_cli.tasks.math import MathTask
from dynamo_cli.verify.deadline import VerifierTimeout, deadline, time_left
from dynamo_cli.verify.symbolic import POOL
from dynamo_cli.verify.verifiers import Watchdog

TIMEOUT = 1.5  # seconds a verification may take here (task.reward_timeout)


@pytest.fixture(scope="module")
def warm_pool():
    POOL.warm()  # math-verify's import (about a second) is paid once per process, never inside a deadline
    yield POOL


def in_thread(where: str, call, *args):
    """`call(*args)` in the main thread, or in a background thread as OneStepOffPolicy runs collect (stages/schedule.py)."""
    if where == "main":
        return call(*args)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="collect") as pool:
        return pool.submit(call, *args).result()


@pytest.mark.parametrize("where", ["main", "collect"])
def test_a_symbolic_check_that_would_run_for_hours_scores_0_within_the_deadline_counted(warm_pool, where):
    task = MathTask(seed=0, num_train=4, num_test_per_level=1, levels=["L1"], format="chat", answer_type="expression")
    task.verifier = task.default_verifier(timeout=TIMEOUT)
    problem = Problem("math/L1/3+5", "3+5", "8", "L1")
    n = 99999999 if where == "main" else 99999997  # another string each time: verdicts are cached
    slow = f"\\boxed{{\\binom{{{n}}}{{49999999}}}}"
    texts = ["\\boxed{8}", slow, f"\\boxed{{\\frac{{{n * 8}}}{{{n}}}}}"]
    rollouts = SimpleNamespace(prompt_index=torch.zeros(3, dtype=torch.long), texts=texts)
    rewards, _, faults = in_thread(where, score, task, [problem], rollouts)  # what SingleTurnEpisodes calls
    assert rewards.tolist() == [1.0, 0.0, 1.0]  # the batch around it is judged normally (the last by a fresh worker)
    assert faults == {"rollout/reward_errors": 0.0, "rollout/reward_timeouts": 1.0}
    start = time.monotonic()
    verification = in_thread(where, task.verifier, [slow.replace("4999", "4998")], [problem])
    assert time.monotonic() - start < TIMEOUT + 1.0  # its deadline, not hours
    assert verification.timeouts == 1 and verification.verdicts[0].status == "timeout"
    again = time.monotonic()
    verification = in_thread(where, task.verifier, [slow], [problem])
    assert time.monotonic() - again < 0.5  # a check that ran out of time is remembered: the same string costs nothing now
    (verdict,) = verification.verdicts
    assert (verdict.reward, verdict.status, verification.timeouts) == (0.0, "timeout", 1)
    assert symbolic_workers_alive() <= {w.proc.pid for w in POOL.idle}  # the killed one is gone


def symbolic_workers_alive() -> set[int]:
    """This process's live symbolic workers (other tests of the session may leave children of other kinds)."""
    alive = set()
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.status() != psutil.STATUS_ZOMBIE and "dynamo_cli.verify.symbolic" in child.cmdline():
                alive.add(child.pid)
    return alive


def test_a_fresh_slow_check_waits_exactly_its_deadline(warm_pool):
    start = time.monotonic()
    with deadline(TIMEOUT), pytest.raises(VerifierTimeout):
        POOL.check("\\binom{99999995}{49999999}", "8")
    assert TIMEOUT - 0.1 < time.monotonic() - start < TIMEOUT + 1.0
    assert time_left() == 10.0  # outside a verifier: the default deadline


def test_the_common_path_never_starts_a_worker():
    started = POOL.started
    for answer_type, completion, reference, expected in [
        ("integer", "\\boxed{204}", "204", 1.0), ("integer", "The answer is 68*3 = 204.", "204", 1.0), ("integer", "\\boxed{68*3}", "204", 0.0),
        ("rational", "The answer is 0.5", "1/2", 1.0), ("rational", "\\boxed{\\frac{1}{2}}", "1/2", 1.0),
        ("expression", "\\boxed{x+1}", "x+1", 1.0), ("expression", "\\boxed{0.50}", "1/2", 1.0),
        ("integer", "\\boxed{\\binom{99999999}{49999999}}", "3", 0.0),  # an expression, never evaluated for an integer task
    ]:
        assert judge(completion, reference, answer_type=answer_type, fallback="none").reward == expected, completion
    assert POOL.started == started


@pytest.mark.parametrize("where", ["main", "collect"])
def test_an_environment_step_past_the_deadline_or_raising_ends_its_trajectory_with_0(warm_pool, where):
    env = CalcEnvironment(answer_type="expression", fallback="none")
    env.reset(Problem("calc/L5/47+38", "47+38", "85", "L5"))
    n = 99999993 if where == "main" else 99999991

    def step(text):
        with Watchdog(TIMEOUT) as watchdog:
            return MultiTurnEpisodes._step(watchdog, env, text, TIMEOUT)

    assert in_thread(where, step, "<calc>47+38</calc>") == (("<result>85</result>", 0.0, False), None)
    start = time.monotonic()
    result, fault = in_thread(where, step, f"\\boxed{{\\binom{{{n}}}{{49999999}}}}")
    assert time.monotonic() - start < TIMEOUT + 1.0
    assert result == (None, 0.0, True) and isinstance(fault, VerifierTimeout)
    result, fault = in_thread(where, step, None)  # the environment's own code raising (a str was expected)
    assert result == (None, 0.0, True) and isinstance(fault, TypeError)


@pytest.mark.parametrize("where", ["main", "collect"])
def test_starting_a_worker_does_not_count_against_the_deadline(where):
    task = MathTask(seed=0, num_train=4, num_test_per_level=1, levels=["L1"], format="chat", answer_type="expression")
    task.verifier = task.default_verifier(timeout=0.3)  # shorter than math-verify's import in a fresh worker
    POOL.close()  # no idle worker: the check starts one
    started = POOL.started
    k = 77 if where == "main" else 79
    verification = in_thread(where, task.verifier, [f"\\boxed{{\\frac{{{8 * k}}}{{{k}}}}}"], [Problem("math/L1/3+5", "3+5", "8", "L1")])
    assert POOL.started == started + 1 and verification.timeouts == 0 and verification.verdicts[0].reward == 1.0
