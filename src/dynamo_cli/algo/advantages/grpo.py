"""algorithm.advantage=grpo: the reward standardised within its group (DeepSeekMath, arXiv 2402.03300)."""
from __future__ import annotations

import torch
from torch import Tensor

from dynamo_cli.algo.advantages.base import ESTIMATORS, GroupEstimator, as_float, group_stats


def grpo_advantages(
    *, rewards: Tensor, group_index: Tensor, num_groups: int, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """GRPO: (r_i - mean_g) / (std_g + eps) with the unbiased std (as verl / torch.std).

    rewards (N,), group_index (N,) long in [0, num_groups). Returns (advantages (N,), zero_signal (N,) bool).
    """
    rewards = as_float(rewards)
    size, mean, zero = group_stats(rewards, group_index, num_groups)
    dev = rewards - mean  # (N,)
    sq = rewards.new_zeros(num_groups).index_add_(0, group_index, dev**2)[group_index]
    std = (sq / (size - 1).clamp(min=1)).sqrt()  # (N,) unbiased
    adv = torch.where(zero, torch.zeros_like(dev), dev / (std + eps))
    return adv, zero


@ESTIMATORS.register("grpo")
def grpo() -> GroupEstimator:
    return GroupEstimator(grpo_advantages)
