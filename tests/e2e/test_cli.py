"""The command line as a user meets it (a subprocess each): bad input ends in one line and exit 2, --help lists the
commands and groups, --cfg job prints the composed config."""
from __future__ import annotations

import pytest
from conftest import dynamo


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "allocator=varience"], "allocator=varience is not an option of allocator; choose one of: dapo, greso, knapsack, uniform, variance"),
        pytest.param(["train", "optim.lr=-0.1"], "optim.lr=-0.1 must be > 0", marks=pytest.mark.smoke),
        (["train", "allocator.n_min=9", "allocator.n_max=4"], "allocator.n_min=9 must be <= allocator.n_max=4"),
        (["eval", "model.path=/no/such/dir"], "model.path='/no/such/dir' is not a directory"),
        (["eval", "task.answer_type=number"],
         "task.answer_type='number' is not allowed; choose one of: integer, rational, expression"),
        (["train", "--multirun", "allocator=uniform,varience"], "allocator=varience is not an option"),
        # an optional group (experiment) is checked too: Hydra itself would skip the typo and run the defaults
        (["train", "experiment=dynamoo"], "experiment=dynamoo is not an option of experiment; choose one of: cispo, clip_cov, clip_higher, curriculum, dapo, dynamo,"),
        (["sft", "trainer.stepz=3"], "trainer.stepz is not a config key"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, expected):
    result = dynamo(*args, check=False, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_help_lists_commands_and_groups():
    out = dynamo("--help").stdout
    for word in ["sft", "train", "eval", "sweep", "allocator", "uniform, variance", "modulator", "dynamo, entropy_advantage",
                 "critic", "none, separate, shared"]:
        assert word in out
    train_help = dynamo("train", "--help").stdout
    assert "allocator: dapo, greso, knapsack, uniform, variance" in train_help and "n_min" in train_help
    assert "sampler: curriculum, uniform" in train_help
    assert "modulator: clip_cov, dynamo, entropy_advantage, fork_tokens, kl_cov, none" in train_help
    assert "mask_truncated" in train_help and "overlong_penalty" in train_help and "positive_weight" in train_help
    assert "critic: none, separate, shared" in train_help and "kl_in_reward: 0.0" in train_help and "lam: 1.0" in train_help


def test_cli_cfg_job_prints_composed_config():
    out = dynamo("train", "--cfg", "job", "experiment=dynamo").stdout
    assert "eps_high: 0.28" in out and "name: variance" in out and "name: dynamo" in out


def test_cli_cfg_job_composes_the_new_options():
    out = dynamo("train", "--cfg", "job", "experiment=kl_cov", "algorithm.mask_truncated=true",
                 "algorithm.overlong_penalty.factor=1.0", "algorithm.overlong_penalty.buffer=2").stdout
    assert "name: kl_cov" in out and "coef: 1.0" in out and "mask_truncated: true" in out and "buffer: 2" in out


@pytest.mark.parametrize("critic, coef", [("separate", 1.0), ("shared", 0.5)])
def test_cli_cfg_job_composes_ppo_with_a_critic(critic, coef):
    out = dynamo("train", "--cfg", "job", "algorithm.advantage=gae", f"critic={critic}", "critic.warmup_steps=2").stdout
    for line in [f"name: {critic}", "value_clip: 0.2", "warmup_steps: 2", f"value_coef: {coef}", "advantage: gae", "gamma: 1.0",
                 "lam: 1.0"]:
        assert line in out, line
