"""End-to-end: Tier 2: every config group option composes and instantiates; bad input ends in one clear line."""
from __future__ import annotations

import pytest
from conftest import dynamo
from helpers import ARITH_FIXTURE, COMMANDS, compose_schema, options

from dynamo_cli.cli import describe_error
from dynamo_cli.recipes import parts


@pytest.mark.parametrize("group", ["model", "task", "logger"])
@pytest.mark.parametrize("command", COMMANDS)
def test_every_shared_option_composes(command, group):
    for option in options(group):
        extra = [f"task.path={ARITH_FIXTURE}"] if option == "jsonl" else []
        cfg = compose_schema(command, [f"{group}={option}", *extra])
        assert getattr(cfg, group).name in (option, option.split("-")[0], "smollm2-135m")


@pytest.mark.parametrize("allocator", options("allocator"))
@pytest.mark.parametrize("modulator", options("modulator"))
def test_every_allocator_and_modulator_composes_and_builds(allocator, modulator):
    cfg = compose_schema("train", [f"allocator={allocator}", f"modulator={modulator}"])
    assert cfg.allocator.name == allocator and cfg.modulator.name == modulator
    parts.build_allocator(cfg).allocate(["a", "b", "c"])
    parts.build_modulator(cfg)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_preset_composes(experiment):
    cfg = compose_schema("train", [f"experiment={experiment}"])
    assert cfg.algorithm.eps_high > 0


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["allocator=varience"], "allocator=varience is not an option of allocator; choose one of: dapo, greso, knapsack, uniform, variance"),
        (["allocator.nmin=3"], "allocator.nmin is not a config key"),
        (["optim.lr=-1"], "optim.lr=-1.0 must be > 0"),
        (["optim.lr=abc"], "optim.lr"),
        (["allocator.n_min=20", "allocator.n_max=10"], "allocator.n_min=20 must be <= allocator.n_max=10"),
        (["rollout.n=32"], "rollout.n=32 must lie in [allocator.n_min, allocator.n_max]"),
        (["model.path=/nonexistent/ckpt"], "model.path='/nonexistent/ckpt' is not a directory"),
        (["modulator.scope=batch"], "modulator.scope='batch' is not allowed; choose one of: micro_batch, mini_batch, sequence"),
        (["task=jsonl"], "task.path is required"),
        (["task=jsonl", "task.path=/no/file.jsonl"], "task.path='/no/file.jsonl': no such file"),
        (["algorithm.advantage=ppo"], "algorithm.advantage='ppo' is not allowed; choose one of: drgrpo, gae, grpo, rloo, w_reinforce"),
        (["algorithm.advantage=gae"], "algorithm.advantage=gae needs a critic; choose one of: critic=separate, critic=shared"),
        (["critic=separate"], "critic=separate trains a value function that algorithm.advantage=grpo never reads"),
        (["critic=value_head"], "critic=value_head is not an option of critic; choose one of: none, separate, shared"),
        (["critic=shared"], "critic=shared trains a value function that algorithm.advantage=grpo never reads"),
        (["algorithm.kl_in_reward=0.1"], "algorithm.kl_in_reward=0.1 needs algorithm.advantage=gae"),
        (["algorithm.advantage=gae", "critic=separate", "algorithm.lam=1.5"], "algorithm.lam=1.5 must be in [0, 1]"),
        (["algorithm.advantage=gae", "critic=separate", "algorithm.gamma=-1"], "algorithm.gamma=-1.0 must be in [0, 1]"),
        (["algorithm.advantage=gae", "critic=separate", "critic.lr=0"], "critic.lr=0.0 must be > 0"),
        (["algorithm.advantage=gae", "critic=separate", "critic.value_clip=-0.2"], "critic.value_clip=-0.2 must be >= 0"),
        (["algorithm.advantage=gae", "critic=separate", "critic.warmup_steps=-1"], "critic.warmup_steps=-1 must be >= 0"),
        (["critic.lr=1e-5"], "critic.lr is not a config key"),
        (["algorithm.micro_batch_size=lots"], "algorithm.micro_batch_size='lots' must be a positive integer or auto"),
        (["rollout.max_batch_size=0"], "rollout.max_batch_size=0 must be a positive integer or auto"),
        (["memory_fraction=1.5"], "memory_fraction=1.5 must be in (0, 1]"),
        (["modulator.scope=micro_batch"], "modulator.scope=micro_batch needs an explicit algorithm.micro_batch_size"),
        (["task.answer_type=float"], "task.answer_type='float' is not allowed; choose one of: integer, rational, expression"),
        (["task=gsm8k", "task.answer_fallback=first"],
         "task.answer_fallback='first' is not allowed; choose one of: auto, none, last_number"),
        (["allocator.prior=level"], "allocator.prior='level' is not allowed; choose one of: none, tag"),
        (["allocator.prior=tag", "allocator.prior_strength=-1"], "allocator.prior_strength=-1.0 must be > 0"),
        (["allocator=uniform", "allocator.decay=0"], "allocator.decay=0.0 must be in (0, 1]"),
        (["allocator=uniform", "allocator.prior=tag"], "allocator.prior is not a config key"),
        (["modulator=fork_tokens", "modulator.top_fraction=0"], "modulator.top_fraction=0.0 must be in (0, 1]"),
        (["modulator=entropy_advantage", "modulator.kappa=0"], "modulator.kappa=0.0 must be > 0"),
        (["modulator=clip_cov", "modulator.cov_low=5"], "modulator.cov_low=5.0 must be < modulator.cov_high=5.0"),
        (["modulator=kl_cov", "modulator.fraction=2"], "modulator.fraction=2.0 must be in (0, 1]"),
        (["modulator=none", "modulator.alpha=1"], "modulator.alpha is not a config key"),
        (["algorithm.advantage=w_reinforce", "algorithm.positive_weight=0"], "algorithm.positive_weight=0.0 must be in (0, 1]"),
        (["algorithm.mask_truncated=maybe"], "algorithm.mask_truncated"),
        (["algorithm.overlong_penalty.factor=-1"], "algorithm.overlong_penalty.factor=-1.0 must be >= 0"),
        (["algorithm.overlong_penalty.buffer=9"], "algorithm.overlong_penalty.buffer=9 must be <= its max_length=8"),
        (["task=code", "task.reward_mode=most"], "task.reward_mode='most' is not allowed; choose one of: fraction, all"),
        (["task=code", "task.timeout=0"], "task.timeout=0.0 must be > 0"),
        (["task.reward=my_rewards.py"], "task.reward='my_rewards.py' must be <module>:<function>"),
        (["task.reward_timeout=0"], "task.reward_timeout=0.0 must be > 0"),
        (["sampler=curriculum", "sampler.order=level"], "sampler.order='level' is not allowed; choose one of: tag, success"),
        (["sampler=curriculum", "sampler.pacing=root"], "sampler.pacing='root' is not allowed; choose one of: linear, step"),
        (["sampler=curriculum", "sampler.start=0"], "sampler.start=0.0 must be in (0, 1]"),
        (["sampler=curriculum", "sampler.pace_steps=-1"], "sampler.pace_steps=-1 must be >= 0"),
        (["sampler=uniform", "sampler.start=0.5"], "sampler.start is not a config key"),
        (["allocator=dapo", "allocator.max_rounds=0"], "allocator.max_rounds=0 must be > 0"),
        (["allocator=greso", "allocator.p_hard=0.99"], "allocator.p_hard=0.99 must be in [p_min, p_max] = [0.05, 0.95]"),
        (["allocator=knapsack", "allocator.n_min=9", "allocator.n_max=4"], "allocator.n_min=9 must be <= allocator.n_max=4"),
        (["allocator=knapsack", "rollout.n=128"], "rollout.n=128 must lie in [allocator.n_min, allocator.n_max] = [2, 64]"),
    ],
)
def test_bad_config_is_one_clear_line(overrides, expected):
    with pytest.raises(Exception) as caught:
        compose_schema("train", overrides)
    message = describe_error(caught.value)
    assert expected in message
    assert "\n" not in message


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
        (["train", "experiment=dynamoo"], "experiment=dynamoo is not an option of experiment; choose one of: clip_cov, clip_higher, curriculum, dapo, dynamo,"),
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
