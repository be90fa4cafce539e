"""The edge where validated configs become objects: each swappable part is chosen here, once."""
from __future__ import annotations

from dynamo_cli import allocators, modulators
from dynamo_cli.config import (
    DynamoModulatorConfig,
    HFRolloutConfig,
    JsonlTaskConfig,
    MathTaskConfig,
    NoModulatorConfig,
    TrainConfig,
    UniformAllocatorConfig,
    VarianceAllocatorConfig,
    VLLMRolloutConfig,
)


def build_task(cfg):
    from dynamo_cli.tasks import JsonlTask, MathTask

    if isinstance(cfg, MathTaskConfig):
        return MathTask(seed=cfg.seed, num_train=cfg.num_train, num_test_per_level=cfg.num_test_per_level,
                        levels=list(cfg.levels), format=cfg.format, answer_type=cfg.answer_type,
                        answer_fallback=cfg.answer_fallback)
    if isinstance(cfg, JsonlTaskConfig):
        return JsonlTask(path=cfg.path, test_path=cfg.test_path, question_field=cfg.question_field,
                         answer_field=cfg.answer_field, level_field=cfg.level_field, id_field=cfg.id_field,
                         test_fraction=cfg.test_fraction, seed=cfg.seed, format=cfg.format, max_problems=cfg.max_problems,
                         answer_type=cfg.answer_type, answer_fallback=cfg.answer_fallback)
    raise TypeError(f"no task for {type(cfg).__name__}")


def build_allocator(cfg: TrainConfig):
    return allocator_from_config(cfg.allocator, n=cfg.rollout.n)


def allocator_from_config(a, *, n: int):
    """The allocator of a validated allocator schema, with budget n rollouts per prompt (benchmarks use it too)."""
    if isinstance(a, UniformAllocatorConfig):
        return allocators.UniformAllocator(n=n, explore_min_attempts=a.explore_min_attempts, decay=a.decay)
    if isinstance(a, VarianceAllocatorConfig):
        return allocators.VarianceAllocator(
            n=n, n_min=a.n_min, n_max=a.n_max, explore_min_attempts=a.explore_min_attempts,
            mastered_threshold=a.mastered_threshold, floor=a.floor, unexplored_priority=a.unexplored_priority,
            weight=a.weight, decay=a.decay, prior=a.prior, prior_strength=a.prior_strength)
    raise TypeError(f"no allocator for {type(a).__name__}")


def build_modulator(cfg: TrainConfig):
    m = cfg.modulator
    if isinstance(m, NoModulatorConfig):
        return modulators.NoModulator()
    if isinstance(m, DynamoModulatorConfig):
        return modulators.DynamoModulator(
            compensate=m.compensate, stabilise=m.stabilise, mu_max=m.mu_max, lambda_min=m.lambda_min,
            gamma=m.gamma, tau=m.tau, eps_low=cfg.algorithm.eps_low, eps_high=cfg.algorithm.eps_high)
    raise TypeError(f"no modulator for {type(m).__name__}")


def build_rollout_engine(cfg: TrainConfig, policy, tokenizer, *, max_model_len: int):
    """The rollout backend: `generate(prompts, counts=..., ...) -> Rollouts` and `sync(policy)` after each update."""
    from dynamo_cli.rollout import PolicyRollouts

    if isinstance(cfg.rollout, HFRolloutConfig):
        return PolicyRollouts(policy, tokenizer)
    if isinstance(cfg.rollout, VLLMRolloutConfig):
        from dynamo_cli.rollout_vllm import VLLMRollouts

        return VLLMRollouts(cfg.rollout, policy, tokenizer, max_model_len=max_model_len, seed=cfg.seed)
    raise TypeError(f"no rollout backend for {type(cfg.rollout).__name__}")
