"""The edge where validated configs become objects: each swappable part is chosen here, once, by its config
`name` (registry.py). To add a part: its class in its own module, a builder registered below, its schema in
config/, a YAML in conf/<group>/, a test.
"""
from __future__ import annotations

from functools import partial

from dynamo_cli.algo.advantages import drgrpo_advantages, grpo_advantages, rloo_advantages, w_reinforce_advantages
from dynamo_cli.algo.reward_shaping import OverlongPenalty
from dynamo_cli.allocation import allocators
from dynamo_cli.allocation import rounds as rollout_allocators
from dynamo_cli.config import (
    CalcTaskConfig,
    ChatJsonlTaskConfig,
    CodeTaskConfig,
    GuessTaskConfig,
    JsonlTaskConfig,
    MathTaskConfig,
    OptimConfig,
    TrainConfig,
)
from dynamo_cli.errors import DynamoError
from dynamo_cli.models.optim import make_optimizer
from dynamo_cli.models.trainable import Trainable
from dynamo_cli.modulation import modulators
from dynamo_cli.registry import Registry
from dynamo_cli.sampling.samplers import CurriculumSampler, UniformSampler
from dynamo_cli.stages.estimate import GAEEstimator, GroupEstimator

TASKS = Registry("task", key=type)  # keyed by schema: several YAMLs (jsonl, gsm8k) share one schema
SAMPLERS = Registry("sampler")
ALLOCATORS = Registry("allocator")
MODULATORS = Registry("modulator")
ROLLOUT_ENGINES = Registry("rollout backend")
ESTIMATORS = Registry("advantage estimator", key=lambda algorithm: algorithm.advantage)
CRITICS = Registry("critic")


# ------------------------------------------------------------------------------------------ tasks
@TASKS.register(MathTaskConfig)
def _math(cfg: MathTaskConfig):
    from dynamo_cli.tasks import MathTask

    return MathTask(seed=cfg.seed, num_train=cfg.num_train, num_test_per_level=cfg.num_test_per_level, levels=list(cfg.levels),
                    format=cfg.format, answer_type=cfg.answer_type, answer_fallback=cfg.answer_fallback,
                    teacher_slip=cfg.teacher_slip)


@TASKS.register(JsonlTaskConfig)
def _jsonl(cfg: JsonlTaskConfig):
    from dynamo_cli.tasks import JsonlTask

    return JsonlTask(path=cfg.path, test_path=cfg.test_path, question_field=cfg.question_field, answer_field=cfg.answer_field,
                     level_field=cfg.level_field, id_field=cfg.id_field, test_fraction=cfg.test_fraction, seed=cfg.seed,
                     format=cfg.format, max_problems=cfg.max_problems, answer_type=cfg.answer_type,
                     answer_fallback=cfg.answer_fallback)


@TASKS.register(CodeTaskConfig)
def _code(cfg: CodeTaskConfig):
    from dynamo_cli.tasks.code import CodeTask
    from dynamo_cli.verify.sandbox import Limits

    limits = Limits(timeout=cfg.timeout, cpu_seconds=cfg.cpu_seconds, memory_mb=cfg.memory_mb, max_processes=cfg.max_processes,
                    file_mb=cfg.file_mb)
    return CodeTask(path=cfg.path, test_path=cfg.test_path, test_fraction=cfg.test_fraction, seed=cfg.seed, format=cfg.format,
                    max_problems=cfg.max_problems, reward_mode=cfg.reward_mode, limits=limits, workers=cfg.workers,
                    prompt_tests=cfg.prompt_tests)


@TASKS.register(CalcTaskConfig)
def _calc(cfg: CalcTaskConfig):
    from dynamo_cli.tasks.calc import CalcTask

    return CalcTask(seed=cfg.seed, num_train=cfg.num_train, num_test_per_level=cfg.num_test_per_level, levels=list(cfg.levels),
                    max_turns=cfg.max_turns, max_tokens=cfg.max_tokens, teacher_tool_use=cfg.teacher_tool_use,
                    answer_type=cfg.answer_type, answer_fallback=cfg.answer_fallback)


@TASKS.register(GuessTaskConfig)
def _guess(cfg: GuessTaskConfig):
    from dynamo_cli.tasks.guess import GuessTask

    return GuessTask(high=cfg.high, num_train=cfg.num_train, max_turns=cfg.max_turns, max_tokens=cfg.max_tokens,
                     turn_penalty=cfg.turn_penalty, teacher=cfg.teacher)


@TASKS.register(ChatJsonlTaskConfig)
def _chat_jsonl(cfg: ChatJsonlTaskConfig):
    from dynamo_cli.tasks.chat_jsonl import ChatJsonlTask

    return ChatJsonlTask(path=cfg.path, test_path=cfg.test_path, messages_field=cfg.messages_field, id_field=cfg.id_field,
                         test_fraction=cfg.test_fraction, seed=cfg.seed, max_problems=cfg.max_problems,
                         answer_type=cfg.answer_type, answer_fallback=cfg.answer_fallback)


# -------------------------------------------------------------------------------- collect's parts
EPISODES = Registry("episode runner", key=lambda task: task.interaction)  # what one rollout of a prompt is (rollout/episodes.py)


@EPISODES.register("single_turn")
def _single_turn(task, *, generate, policy, tokenizer, backend: str):
    from dynamo_cli.rollout.episodes import SingleTurnEpisodes

    return SingleTurnEpisodes(generate, task)


@EPISODES.register("environment")
def _environment(task, *, generate, policy, tokenizer, backend: str):
    from dynamo_cli.rollout.episodes import MultiTurnEpisodes

    if backend != "hf":
        raise DynamoError(f"task={task.name} is an environment: its multi-turn rollouts run on rollout=hf, not rollout={backend}")
    return MultiTurnEpisodes(policy, tokenizer, task)


@SAMPLERS.register("uniform")
def _uniform_sampler(cfg, *, run: TrainConfig, problems: list):
    return UniformSampler(seed=run.seed)


@SAMPLERS.register("curriculum")
def _curriculum_sampler(s, *, run: TrainConfig, problems: list):
    tags = {p.level for p in problems}
    if s.order == "tag" and len(tags) < 2:
        raise DynamoError(f"sampler.order=tag needs at least two difficulty tags; task={run.task.name} has {sorted(tags)}: "
                          "choose sampler.order=success")
    if s.tag_order is not None and tags - set(s.tag_order):
        raise DynamoError(f"sampler.tag_order={list(s.tag_order)} misses the task's tags {sorted(tags - set(s.tag_order))}")
    return CurriculumSampler(problems=problems, seed=run.seed, order=s.order, pacing=s.pacing, start=s.start,
                             pace_steps=run.trainer.steps // 2 if s.pace_steps is None else s.pace_steps, stages=s.stages, tag_order=None if s.tag_order is None else list(s.tag_order))


@ALLOCATORS.register("uniform")
def _uniform_allocator(a, *, n: int):
    return allocators.UniformAllocator(n=n, explore_min_attempts=a.explore_min_attempts, decay=a.decay)


@ALLOCATORS.register("variance")
def _variance_allocator(a, *, n: int):
    return allocators.VarianceAllocator(
        n=n, n_min=a.n_min, n_max=a.n_max, explore_min_attempts=a.explore_min_attempts,
        mastered_threshold=a.mastered_threshold, floor=a.floor, unexplored_priority=a.unexplored_priority,
        weight=a.weight, decay=a.decay, prior=a.prior, prior_strength=a.prior_strength)


@ALLOCATORS.register("dapo")
def _dapo_allocator(a, *, n: int):
    return rollout_allocators.DapoAllocator(n=n, max_rounds=a.max_rounds, explore_min_attempts=a.explore_min_attempts,
                                            decay=a.decay)


@ALLOCATORS.register("greso")
def _greso_allocator(a, *, n: int):
    return rollout_allocators.GresoAllocator(n=n, max_rounds=a.max_rounds, p_easy=a.p_easy, p_hard=a.p_hard,
                                             target_zero_variance=a.target_zero_variance, delta=a.delta, p_min=a.p_min,
                                             p_max=a.p_max, seed=a.seed, explore_min_attempts=a.explore_min_attempts, decay=a.decay)


@ALLOCATORS.register("knapsack")
def _knapsack_allocator(a, *, n: int):
    return rollout_allocators.KnapsackAllocator(n=n, n_min=a.n_min, n_max=a.n_max, explore_min_attempts=a.explore_min_attempts,
                                                decay=a.decay)


@ROLLOUT_ENGINES.register("hf")
def _hf(cfg, *, run: TrainConfig, policy, tokenizer, max_model_len: int):
    from dynamo_cli.rollout.hf import PolicyRollouts

    return PolicyRollouts(policy, tokenizer)


@ROLLOUT_ENGINES.register("vllm")
def _vllm(cfg, *, run: TrainConfig, policy, tokenizer, max_model_len: int):
    from dynamo_cli.rollout.vllm import VLLMRollouts

    return VLLMRollouts(cfg, policy, tokenizer, max_model_len=max_model_len, seed=run.seed,
                        logprobs=run.algorithm.rollout_is != "none")


# ------------------------------------------------------------------------------- estimate's parts
for _name, _fn in (("grpo", grpo_advantages), ("drgrpo", drgrpo_advantages), ("rloo", rloo_advantages)):
    ESTIMATORS.register(_name)(lambda algorithm, dp=None, fn=_fn: GroupEstimator(fn))


@ESTIMATORS.register("gae")
def _gae(a, dp=None):
    reduce = {} if dp is None else {"total": dp.sum, "gather_rows": dp.gather_rows}  # whiten over every process's tokens
    return GAEEstimator(gamma=a.gamma, lam=a.lam, kl_coef=a.kl_in_reward, **reduce)


@CRITICS.register("none")
def _no_critic(cfg, *, policy, device, resume_from):
    return None


@CRITICS.register("separate")
def _separate_critic(cfg, *, policy, device, resume_from):
    from dynamo_cli.models.critic import SeparateCritic, make_critic

    return SeparateCritic(make_critic(policy, device, resume_from=resume_from))


@CRITICS.register("shared")
def _shared_critic(cfg, *, policy, device, resume_from):
    from dynamo_cli.models.critic import SharedCritic, make_value_head

    return SharedCritic(make_value_head(policy, device, resume_from=resume_from))


@ESTIMATORS.register("w_reinforce")
def _w_reinforce(algorithm, dp=None):
    return GroupEstimator(partial(w_reinforce_advantages, positive_weight=algorithm.positive_weight))


# --------------------------------------------------------------------------------- update's parts
@MODULATORS.register("none")
def _no_modulator(cfg, *, run: TrainConfig):
    return modulators.NoModulator()


@MODULATORS.register("dynamo")
def _dynamo_modulator(m, *, run: TrainConfig):
    return modulators.DynamoModulator(compensate=m.compensate, stabilise=m.stabilise, mu_max=m.mu_max, lambda_min=m.lambda_min,
                                      gamma=m.gamma, tau=m.tau, eps_low=run.algorithm.eps_low, eps_high=run.algorithm.eps_high)


@MODULATORS.register("fork_tokens")
def _fork_tokens(m, *, run: TrainConfig):
    return modulators.ForkTokensModulator(top_fraction=m.top_fraction)


@MODULATORS.register("entropy_advantage")
def _entropy_advantage(m, *, run: TrainConfig):
    return modulators.EntropyAdvantageModulator(alpha=m.alpha, kappa=m.kappa)


@MODULATORS.register("clip_cov")
def _clip_cov(m, *, run: TrainConfig):
    return modulators.ClipCovModulator(fraction=m.fraction, cov_low=m.cov_low, cov_high=m.cov_high,
                                       eps_low=run.algorithm.eps_low, eps_high=run.algorithm.eps_high)


@MODULATORS.register("kl_cov")
def _kl_cov(m, *, run: TrainConfig):
    from dynamo_cli.algo.terms import CovarianceKL, Weighted

    return modulators.KLCovModulator(fraction=m.fraction, penalty=Weighted(CovarianceKL(), m.coef))


# ------------------------------------------------------------------------- the names recipes call
def build_task(cfg):
    """The task, with its verifier chosen once: a user's task.reward (worker processes), else the task's own."""
    task = TASKS.build(cfg)
    task.verifier = build_verifier(cfg, task)
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
    return SAMPLERS.build(cfg.sampler, run=cfg, problems=problems)


def build_allocator(cfg: TrainConfig):
    return allocator_from_config(cfg.allocator, n=cfg.rollout.n)


def allocator_from_config(a, *, n: int):
    """The allocator of a validated allocator schema, with budget n rollouts per prompt (benchmarks use it too)."""
    return ALLOCATORS.build(a, n=n)


def build_modulator(cfg: TrainConfig):
    return MODULATORS.build(cfg.modulator, run=cfg)


def build_estimator(cfg: TrainConfig, dp=None):
    """dp: the processes a value-based estimator whitens over (None: one process)."""
    return ESTIMATORS.build(cfg.algorithm, dp=dp)


def build_critic(cfg: TrainConfig, policy, *, device, resume_from):
    """The value function (models/critic.py: separate, a copy of the policy's trunk with a scalar head; shared, a head on the
    policy's hidden state; resumed from <checkpoint>/critic), or None."""
    return CRITICS.build(cfg.critic, policy=policy, device=device, resume_from=resume_from)


def critic_trainables(cfg: TrainConfig, critic, *, dp, total_steps: int, micro_batch_size: int) -> list[Trainable]:
    """[the critic as a Trainable: its own AdamW (critic.lr), schedule, grad clip and DDP wrap], or [] without one."""
    if critic is None:
        return []
    c = cfg.critic
    if dp.sharded:
        raise DynamoError(f"critic={c.name} under FSDP2 is not supported: run it on one process or under DDP (conf/accelerate/ddp.yaml)")
    if dp.deepspeed:
        raise DynamoError(f"critic={c.name} runs on one process or under DDP (conf/accelerate/ddp.yaml); DeepSpeed "
                          "prepares a single model per run")
    optimizer, scheduler = make_optimizer(critic.module, OptimConfig(lr=c.lr, weight_decay=c.weight_decay, warmup_steps=c.lr_warmup_steps,
                                                              grad_clip=c.grad_clip), total_steps=total_steps)
    module, optimizer = dp.prepare(critic.module, optimizer, micro_batch_size=micro_batch_size)
    return [Trainable("critic", module, optimizer, scheduler, grad_clip=c.grad_clip, solo_steps=c.warmup_steps)]


def build_reward_shaping(cfg: TrainConfig) -> OverlongPenalty:
    """Between verifier and estimator: rewards (B,), lengths (B,) -> (the rewards the estimator learns from, metrics)."""
    max_length, buffer = cfg.algorithm.overlong_penalty.resolved(cfg.rollout.max_new_tokens or cfg.task.max_new_tokens)
    return OverlongPenalty(factor=cfg.algorithm.overlong_penalty.factor, max_length=max_length, buffer=buffer)


def build_episodes(cfg: TrainConfig, task, *, engine, policy, tokenizer):
    """What one rollout is: the engine's completion judged by the task, or (an environment task) a dialogue with it."""
    return EPISODES.build(task, generate=engine.generate, policy=policy, tokenizer=tokenizer, backend=cfg.rollout.name)


def build_rollout_engine(cfg: TrainConfig, policy, tokenizer, *, max_model_len: int):
    """The rollout backend: `generate(prompts, counts=..., ...) -> Rollouts` and `sync(policy)` after each update."""
    return ROLLOUT_ENGINES.build(cfg.rollout, run=cfg, policy=policy, tokenizer=tokenizer, max_model_len=max_model_len)


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
