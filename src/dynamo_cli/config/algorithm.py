"""algorithm schemas."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from dynamo_cli.config.base import check, check_batch_size, one_of, positive


# ----------------------------------------------------------------------------------- optimisation
@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0  # linear warm-up from 0
    schedule: str = "constant"  # after warm-up: constant | cosine | linear
    min_lr_ratio: float = 0.0  # cosine/linear decay ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    # float32: the weights and AdamW's moments stay float32 and model.dtype is the autocast dtype of the forwards (as TRL and
    # verl train); model: the weights are held and updated in model.dtype itself (half the memory, but a bf16 weight
    # ignores any update below half its ulp: ~6e-5 at |w| = 0.02, so lr 1e-6 changes almost nothing)
    master_weights: str = "float32"

    def __post_init__(self) -> None:
        positive("optim.lr", self.lr)
        positive("optim.weight_decay", self.weight_decay, strict=False)
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"optim.betas={self.betas} must be two values in [0, 1)")
        positive("optim.warmup_steps", self.warmup_steps, strict=False)
        from dynamo_cli.models.optim import SCHEDULES  # the allowed values live with their implementation

        one_of("optim.schedule", self.schedule, SCHEDULES)
        check(0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        positive("optim.grad_clip", self.grad_clip, strict=False)
        one_of("optim.master_weights", self.master_weights, ("float32", "model"))


@dataclass
class OverlongPenaltyConfig:
    """DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13), added to the reward the estimator learns from:
    0 up to L_max − L_cache tokens, then falling linearly to −1 at L_max, −1 beyond (algo/reward_shaping.py)."""

    factor: float = 0.0  # weight of the penalty; 0 = off (DAPO: 1.0)
    max_length: Optional[int] = None  # L_max in tokens; None: the rollout's max_new_tokens (DAPO: 20480)
    buffer: Optional[int] = None  # L_cache in tokens; None: max(1, L_max // 5), DAPO's ratio (4096 of 20480)

    def __post_init__(self) -> None:
        positive("algorithm.overlong_penalty.factor", self.factor, strict=False)
        for key in ("max_length", "buffer"):
            if getattr(self, key) is not None:
                positive(f"algorithm.overlong_penalty.{key}", getattr(self, key))

    def resolved(self, max_new_tokens: int) -> tuple[int, int]:
        """(L_max, L_cache) with the None defaults filled in."""
        max_length = self.max_length or max_new_tokens
        return max_length, self.buffer or max(1, max_length // 5)


@dataclass
class AlgorithmConfig:
    """The policy-gradient estimator and loss."""

    # grpo (std-normalised) | drgrpo (no std) | rloo (leave-one-out) | w_reinforce (±1 rewards, no baseline, arXiv 2506.01347)
    # | gae (PPO: a critic, critic=separate|shared)
    advantage: str = "grpo"
    positive_weight: float = 0.1  # W-REINFORCE's λ: weight of correct samples' +1 (the paper's 0.1); other estimators ignore it
    # the policy term (algo/terms/): ppo_clip (PPO-clip with eps_low/eps_high) | gspo (sequence-level, length-normalised
    # ratio, arXiv 2507.18071) | cispo (clipped stop-gradient IS weight on a REINFORCE token loss, arXiv 2506.13585)
    policy_loss: str = "ppo_clip"
    eps_low: float = 0.2  # clip: ratio >= 1 - eps_low (1: no lower bound, CISPO's choice)
    eps_high: float = 0.28  # clip: ratio <= 1 + eps_high (Clip-Higher; the paper's value, stated, not hidden)
    # dual-clip (ppo_clip): where A < 0 the token loss is capped at -c A (verl's clip_ratio_c, its default 3); null: off
    clip_ratio_c: Optional[float] = None
    # token_mean | seq_mean | seq_mean_token_sum_norm (Dr. GRPO: token sums over a constant length, the rollouts'
    # max_new_tokens) | group_mean (each prompt's rows averaged, then the prompts: every prompt weighs the same)
    loss_agg: str = "token_mean"
    ppo_epochs: int = 1  # passes over each step's rollouts
    mini_batches: int = 1  # optimiser updates per epoch (the step's rollouts are split into this many)
    micro_batch_size: Any = "auto"  # sequences per forward/backward (gradient accumulation inside a mini-batch); auto: fit memory
    kl_coef: float = 0.0  # k3 KL penalty to a frozen copy of the initial policy; 0 = no reference model
    entropy_coef: float = 0.0  # entropy bonus coefficient (loss -= coef * mean entropy)
    mask_truncated: bool = False  # drop completions cut at max_new_tokens (no EOS) from the loss (DAPO's overlong filtering)
    overlong_penalty: OverlongPenaltyConfig = field(default_factory=OverlongPenaltyConfig)
    # gae: discount and GAE λ (Schulman et al. 2016). γ = λ = 1 as verl's PPO: the only reward is at the end of a short
    # episode, and λ = 1 gives the unbiased Monte-Carlo advantage R − V_t, not bootstrapped from a young critic
    gamma: float = 1.0
    lam: float = 1.0
    kl_in_reward: float = 0.0  # gae: β of a per-token reward −β (log π_old − log π_ref) (InstructGPT-style PPO); 0 = off
    # truncated importance sampling of the rollout engine's samples (algo/importance.py: the engine's log-probs μ differ from
    # the trainer's π_old: vLLM's kernels, or hf generating from a bf16 copy): none | token (min(π_old/μ, cap) per token)
    # | sequence (min(Π π_old/μ, cap) per sequence)
    rollout_is: str = "none"
    rollout_is_cap: float = 2.0  # C, the truncation of the importance weights (TIS's default)
    # masked importance sampling (verl's rollout correction): none | token (a token whose π_old/μ leaves rollout_mask_bounds
    # gets no loss) | sequence (a sequence whose Π π_old/μ leaves them gets none)
    rollout_mask: str = "none"
    rollout_mask_bounds: list[float] = field(default_factory=lambda: [0.5, 2.0])  # [lo, hi] of the ratios kept
    # log π_old and entropies from the first mini-batch's training forward, not a separate pass, where exact (docs/scaling.md "Speed")
    reuse_forward: bool = True

    def __post_init__(self) -> None:
        from dynamo_cli.algo.advantages.base import ESTIMATORS  # each registered where it is implemented
        from dynamo_cli.algo.importance import LEVELS
        from dynamo_cli.algo.terms.base import AGGREGATIONS, POLICY_LOSSES

        one_of("algorithm.advantage", self.advantage, tuple(ESTIMATORS.names()))
        one_of("algorithm.policy_loss", self.policy_loss, tuple(POLICY_LOSSES.names()))
        check(0 < self.positive_weight <= 1, f"algorithm.positive_weight={self.positive_weight} must be in (0, 1]")
        check(0 < self.eps_low <= 1, f"algorithm.eps_low={self.eps_low} must be in (0, 1]")
        positive("algorithm.eps_high", self.eps_high)
        if self.clip_ratio_c is not None:
            check(self.clip_ratio_c > 1, f"algorithm.clip_ratio_c={self.clip_ratio_c} must be > 1 (or null: no dual-clip)")
            check(self.policy_loss == "ppo_clip", f"algorithm.clip_ratio_c={self.clip_ratio_c} is PPO-clip's dual-clip; "
                  f"algorithm.policy_loss={self.policy_loss} has no such cap: set clip_ratio_c=null or policy_loss=ppo_clip")
        one_of("algorithm.loss_agg", self.loss_agg, AGGREGATIONS)
        positive("algorithm.ppo_epochs", self.ppo_epochs)
        positive("algorithm.mini_batches", self.mini_batches)
        check_batch_size("algorithm.micro_batch_size", self.micro_batch_size)
        positive("algorithm.kl_coef", self.kl_coef, strict=False)
        positive("algorithm.entropy_coef", self.entropy_coef, strict=False)
        check(0 <= self.gamma <= 1, f"algorithm.gamma={self.gamma} must be in [0, 1]")
        check(0 <= self.lam <= 1, f"algorithm.lam={self.lam} must be in [0, 1]")
        positive("algorithm.kl_in_reward", self.kl_in_reward, strict=False)
        one_of("algorithm.rollout_is", self.rollout_is, LEVELS)
        check(self.rollout_is_cap >= 1, f"algorithm.rollout_is_cap={self.rollout_is_cap} must be >= 1")
        one_of("algorithm.rollout_mask", self.rollout_mask, LEVELS)
        bounds = list(self.rollout_mask_bounds)
        check(len(bounds) == 2 and 0 < bounds[0] <= 1 <= bounds[1],
              f"algorithm.rollout_mask_bounds={bounds} must be [lo, hi] with 0 < lo <= 1 <= hi")
        check(self.kl_in_reward == 0 or self.advantage == "gae",
               f"algorithm.kl_in_reward={self.kl_in_reward} needs algorithm.advantage=gae (a group estimator has no per-token reward)")
