"""The parts of a train run, each built once from the validated config: every group's registry builds its chosen
option from the option's schema and the run-level context it needs (registry.py). Nothing else picks a part.
"""
from __future__ import annotations

import os

from dynamo_cli.algo.advantages.base import ESTIMATORS
from dynamo_cli.algo.reward_shaping import OverlongPenalty
from dynamo_cli.allocation.base import ALLOCATORS
from dynamo_cli.config.recipes import TrainConfig
from dynamo_cli.errors import warn
from dynamo_cli.models.critic import CRITICS
from dynamo_cli.modulation.base import MODULATORS
from dynamo_cli.rollout.engines import ROLLOUT_ENGINES
from dynamo_cli.rollout.episodes import EPISODES
from dynamo_cli.sampling.base import SAMPLERS
from dynamo_cli.tasks.base import TASKS, TaskError


# ------------------------------------------------------------------------- the names recipes call
def build_task(cfg):
    """The task, with its verifier chosen once: a user's task.reward (worker processes), else the task's own. Its data is
    read here, before any other work: a malformed file stops in one line (TaskError), and so does an empty split; rows
    skipped for a stated reason are printed, one line per file."""
    task = TASKS.build(cfg)
    for side, problems in (("train", task.train_problems()), ("test", task.test_problems())):
        if not problems:
            source = getattr(cfg, "test_path", None) if side == "test" else None
            source = source or getattr(cfg, "path", None)
            raise TaskError(f"task={cfg.name}: the {side} split is empty" + (f" ({source})" if source else "")
                            + "; nothing to " + ("train on" if side == "train" else "evaluate"))
    for note in task.skip_notes():
        warn(note)
    task.verifier = build_verifier(cfg, task)
    if note := getattr(task.verifier, "note", None):  # task=code: the isolation its programs run under
        if not getattr(task.verifier, "isolated", True):
            warn(note)
        elif os.environ.get("RANK", "0") == "0":
            print(f"dynamo: {note}", flush=True)
    return task


def build_verifier(cfg, task):
    """task.reward=<module>:<function> (loaded and checked here: a wrong path or signature fails at start), else the
    task's default verifier (its judge, guarded; task=code: the sandbox)."""
    if cfg.reward is None:
        return task.default_verifier(timeout=cfg.reward_timeout)
    from dynamo_cli.verify.user_reward import UserReward

    return UserReward(cfg.reward, batched=cfg.reward_batched, workers=cfg.workers, timeout=cfg.reward_timeout)


def build_sampler(cfg: TrainConfig, *, problems: list):
    """The sampler over the run's prompt pool `problems` (a curriculum orders them by their tags)."""
    return SAMPLERS.build(cfg.sampler, problems=problems, seed=cfg.seed, steps=cfg.trainer.steps)


def build_allocator(cfg: TrainConfig):
    return ALLOCATORS.build(cfg.allocator, n=cfg.rollout.n)


def allocator_from_config(a, *, n: int):
    """The allocator of a validated allocator schema, with budget n rollouts per prompt (benchmarks use it too)."""
    return ALLOCATORS.build(a, n=n)


def build_modulator(cfg: TrainConfig):
    return MODULATORS.build(cfg.modulator, eps_low=cfg.algorithm.eps_low, eps_high=cfg.algorithm.eps_high)


def build_estimator(cfg: TrainConfig, dp=None):
    """dp: the processes a value-based estimator whitens over (None: one process)."""
    return ESTIMATORS.build(cfg.algorithm, **({} if dp is None else {"total": dp.sum, "gather_rows": dp.gather_rows}))


def build_critic(cfg: TrainConfig, policy, *, device, resume_from):
    """The value function (models/critic.py: separate, a copy of the policy's trunk with a scalar head; shared, a head on the
    policy's hidden state; resumed from <checkpoint>/critic), or None."""
    return CRITICS.build(cfg.critic, policy=policy, device=device, resume_from=resume_from)


def build_reward_shaping(cfg: TrainConfig) -> OverlongPenalty:
    """Between verifier and estimator: rewards (B,), lengths (B,) -> (the rewards the estimator learns from, metrics)."""
    max_length, buffer = cfg.algorithm.overlong_penalty.resolved(cfg.max_new_tokens)
    return OverlongPenalty(factor=cfg.algorithm.overlong_penalty.factor, max_length=max_length, buffer=buffer)


def build_episodes(task, *, engine, policy, tokenizer):
    """What one rollout is: the engine's completion judged by the task, or (an environment task) a dialogue with it."""
    return EPISODES.build(task, task=task, generate=engine.generate, policy=policy, tokenizer=tokenizer)


def build_rollout_engine(cfg: TrainConfig, policy, tokenizer, *, longest_sequence: int, dp):
    """The rollout backend: `generate(prompts, counts=..., ...) -> Rollouts` and `sync(policy)` after each update.

    rollout=hf generates from a copy of the weights under mixed precision (in model.dtype: `generation_dtype`) and with LoRA
    (the adapter merged in: rollout.merge_lora), except where the policy itself is the thing to generate on (`copy_allowed`
    False): FSDP2's gathered parameters, and the one-step-off-policy behaviour copy (generated on under autocast, so that
    no second copy is refreshed while the background collect reads it). vLLM holds
    its weights in model.dtype, on this process's GPU (`local_rank`)."""
    from dynamo_cli.models import precision

    copy_dtype = precision.autocast_dtype(cfg.model.dtype, cfg.optim.master_weights)
    return ROLLOUT_ENGINES.build(cfg.rollout, policy=policy, tokenizer=tokenizer, longest_sequence=longest_sequence, seed=cfg.seed,
                                 generation_dtype=copy_dtype, copy_allowed=not (dp.sharded or cfg.rollout.one_step_off_policy),
                                 model_dtype=cfg.model.dtype, rank=dp.rank, world_size=dp.world_size,
                                 local_rank=(dp.device.index or 0) if dp.device.type == "cuda" else 0)


def behaviour_policy(cfg: TrainConfig, policy):
    """The weights rollouts are sampled and scored with: the policy itself, or under rollout.one_step_off_policy a
    frozen copy that each step refreshes before the update (stages/schedule.py)."""
    from dynamo_cli.stages.schedule import behaviour_copy

    return behaviour_copy(policy) if cfg.rollout.one_step_off_policy else policy


def collect_parallel(cfg: TrainConfig, dp):
    """The collectives collect runs on: the run's, or under one_step_off_policy a side channel of their own, because
    the background collect runs them while the update runs its own (DataParallel.side_channel)."""
    return dp.side_channel() if cfg.rollout.one_step_off_policy else dp


def build_schedule(cfg: TrainConfig, collect, *, policy, behaviour):
    """When rollouts are generated relative to the update: on-policy, or one step ahead during it."""
    from dynamo_cli.stages.schedule import OneStepOffPolicy, OnPolicy

    return OneStepOffPolicy(collect, policy=policy, behaviour=behaviour) if cfg.rollout.one_step_off_policy else OnPolicy(collect)
