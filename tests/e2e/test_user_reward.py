"""Verifier faults are scored 0 and counted, never fatal (one bad rollout must not end a run), and task.reward plugs in a user's reward
from a file outside the repo (a user's reward need not be part of the package)."""
from __future__ import annotations

import json
import textwrap
import time

import pytest
from conftest import dynamo

from dynamo_cli.config.base import ConfigError
from dynamo_cli.config.task import MathTaskConfig
from dynamo_cli.errors import DynamoError
from dynamo_cli.rollout.episodes import score
from dynamo_cli.tasks.answers import Verdict
from dynamo_cli.tasks.base import Problem
from dynamo_cli.tasks.math import MathTask
from dynamo_cli.verify.user_reward import UserReward
from dynamo_cli.verify.verifiers import JudgeVerifier, add_metrics

P = Problem("math/L1/3+5", "3+5", "8", "L1")
REWARDS = textwrap.dedent("""
    import os, time

    def exact(completion, problem):
        return float(completion.strip() == problem["answer"])

    def flaky(completion, problem):
        if completion == "raise":
            raise ValueError("bad completion")
        if completion == "hang":
            time.sleep(60)
        if completion == "nan":
            return float("nan")
        if completion == "text":
            return "high"
        if completion == "exit":
            os._exit(3)
        print("user code may print")  # goes to stderr, never into the worker's protocol
        return 1.0

    class Counter:
        def __init__(self):
            self.calls = 0

        def __call__(self, completion, problem):
            self.calls += 1
            return float(self.calls)

    def lengths(completions, problems):
        return [float(len(c)) for c in completions]

    def short(completions, problems):
        return [1.0]

    def one_argument(completion):
        return 0.0

    class NeedsArguments:
        def __init__(self, path):
            pass

        def __call__(self, completion, problem):
            return 0.0
""")


@pytest.fixture(scope="module")
def rewards_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("outside_the_repo") / "my_rewards.py"
    path.write_text(REWARDS)
    return path


# ---------------------------------------------------------------------------- built-in verifier faults
def test_a_judge_that_raises_or_hangs_scores_0_and_is_counted():
    def judge(completion, problem):
        if completion == "raise":
            raise RuntimeError("sympy blew up")
        if completion == "hang":
            time.sleep(30)
        return Verdict(1.0, "boxed", completion)

    start = time.monotonic()
    verification = JudgeVerifier(judge, timeout=0.3)(["8", "raise", "hang", "8"], [P] * 4)
    assert time.monotonic() - start < 5  # the hang was cut at 0.3 s
    assert [v.reward for v in verification.verdicts] == [1.0, 0.0, 0.0, 1.0]
    assert verification.metrics() == {"rollout/reward_errors": 1.0, "rollout/reward_timeouts": 1.0}


def test_score_counts_a_failing_built_in_judge_and_goes_on():
    class Broken(MathTask):
        def judge(self, completion, problem):
            if completion == "x":
                raise ValueError("unparsable")
            return super().judge(completion, problem)

    from types import SimpleNamespace

    import torch

    task = Broken(seed=0, num_train=4, num_test_per_level=1, levels=["L1"], format="chat")
    rollouts = SimpleNamespace(prompt_index=torch.tensor([0, 0, 0]), texts=["\\boxed{8}", "x", "\\boxed{9}"])
    rewards, rules, faults = score(task, [P], rollouts)
    assert rewards.tolist() == [1.0, 0.0, 0.0]
    assert faults == {"rollout/reward_errors": 1.0, "rollout/reward_timeouts": 0.0}
    assert add_metrics(faults, faults)["rollout/reward_errors"] == 2.0  # rounds (and processes) add up


# --------------------------------------------------------------------------------- bring your own reward
def test_a_function_from_a_file_outside_the_repo(rewards_file):
    reward = UserReward(f"{rewards_file}:exact", batched=False, workers=2, timeout=10)
    verification = reward(["8", "9", " 8 "], [P] * 3)
    assert [v.reward for v in verification.verdicts] == [1.0, 0.0, 1.0]
    assert {v.rule for v in verification.verdicts} == {"reward_fn"}
    reward.close()


def test_a_class_is_built_once_per_worker_and_keeps_its_state(rewards_file):
    reward = UserReward(f"{rewards_file}:Counter", batched=False, workers=1, timeout=10)
    assert [v.reward for v in reward(["a", "b", "c"], [P] * 3).verdicts] == [1.0, 2.0, 3.0]
    assert [v.reward for v in reward(["d"], [P]).verdicts] == [4.0]  # the same instance, next batch
    reward.close()


def test_a_batched_function_gets_chunks_and_a_wrong_length_is_an_error(rewards_file):
    reward = UserReward(f"{rewards_file}:lengths", batched=True, workers=2, timeout=10)
    assert [v.reward for v in reward(["a", "bb", "ccc"], [P] * 3).verdicts] == [1.0, 2.0, 3.0]
    short = UserReward(f"{rewards_file}:short", batched=True, workers=1, timeout=10)
    verification = short(["a", "b"], [P] * 2)
    assert [v.reward for v in verification.verdicts] == [0.0, 0.0] and verification.errors == 2
    reward.close()
    short.close()


def test_exceptions_timeouts_and_bad_values_score_0_are_counted_and_the_pool_recovers(rewards_file):
    reward = UserReward(f"{rewards_file}:flaky", batched=False, workers=2, timeout=1.0)
    completions = ["ok", "raise", "hang", "nan", "text", "exit", "ok"]
    verification = reward(completions, [P] * len(completions))
    assert [v.reward for v in verification.verdicts] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert verification.metrics() == {"rollout/reward_errors": 4.0, "rollout/reward_timeouts": 1.0}
    again = reward(["ok", "ok"], [P] * 2)  # the killed and the dead workers were replaced
    assert [v.reward for v in again.verdicts] == [1.0, 1.0] and again.errors == again.timeouts == 0
    reward.close()


@pytest.mark.parametrize("spec, message", [
    ("{dir}/nope.py:exact", "no such file"),
    ("{file}:missing", "has no 'missing'; callables there: Counter, NeedsArguments, exact, flaky, lengths"),
    ("{file}:one_argument", "one_argument(completion) must take (completion, problem)"),
    ("{file}:NeedsArguments", "must be constructible with no arguments"),
    ("no_such_module_anywhere:f", "could not import 'no_such_module_anywhere': ModuleNotFoundError"),
])
def test_a_wrong_path_or_signature_is_a_one_line_error_at_start(rewards_file, spec, message):
    with pytest.raises(DynamoError) as error:
        UserReward(spec.format(dir=rewards_file.parent, file=rewards_file), batched=False, workers=1, timeout=1)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_task_reward_must_name_a_module_and_a_function():
    with pytest.raises(ConfigError, match="must be <module>:<function>"):
        MathTaskConfig(reward="my_rewards.py")
    assert MathTaskConfig(reward="my_rewards.py:score").reward == "my_rewards.py:score"


# ------------------------------------------------------------------------------------------ end to end
TINY = ["logger=none", "device=cpu", "model.hidden_size=64", "model.num_layers=2", "model.intermediate_size=128",
        "task.levels=[L1]", "task.num_train=40", "task.num_test_per_level=2", "eval.n_samples=0", "trainer.eval_every=0",
        "trainer.save_every=0", "trainer.prompts_per_step=4", "rollout.n=4", "trainer.steps=2", "trainer.dump_rollouts=true"]


def test_train_with_a_user_reward_that_sometimes_fails(tmp_path, rewards_file):
    reward = tmp_path / "elsewhere" / "reward.py"
    reward.parent.mkdir()
    # a completion that starts with a digit gets its length; any other raises: counted, scored 0, the run finishes
    reward.write_text("def score(completion, problem):\n    if not completion[:1].isdigit():\n"
                      "        raise ValueError(completion)\n    return float(len(completion))\n")
    run = tmp_path / "run"
    dynamo("train", f"hydra.run.dir={run}", f"task.reward={reward}:score", *TINY)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]
    assert len(steps) == 2
    rollouts = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    for step in steps:
        mine = [r for r in rollouts if r["step"] == step["step"]]
        failed = sum(not r["completion"][:1].isdigit() for r in mine)
        assert step["rollout/reward_errors"] == failed and step["rollout/reward_timeouts"] == 0
        assert step["rollout/extract_reward_fn_frac"] == (len(mine) - failed) / len(mine)
    for r in rollouts:
        want = float(len(r["completion"])) if r["completion"][:1].isdigit() else 0.0
        assert r["reward"] == want


def test_train_with_a_bad_reward_path_fails_at_start_in_one_line(tmp_path):
    result = dynamo("train", f"hydra.run.dir={tmp_path}", f"task.reward={tmp_path}/missing.py:score", *TINY, check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if "task.reward" in line]
    assert len(lines) == 1 and "no such file" in lines[0]
