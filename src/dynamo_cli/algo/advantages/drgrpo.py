"""algorithm.advantage=drgrpo: the reward minus its group mean, no std (Dr. GRPO, arXiv 2503.20783)."""
from __future__ import annotations

import torch
from torch import Tensor

from dynamo_cli.algo.advantages.base import ESTIMATORS, GroupEstimator, as_float, group_stats


def drgrpo_advantages(
    *, rewards: Tensor, group_index: Tensor, num_groups: int, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Dr. GRPO (arXiv 2503.20783): r_i - mean_g, no std normalisation. `eps` unused (same signature)."""
    rewards = as_float(rewards)
    _, mean, zero = group_stats(rewards, group_index, num_groups)
    adv = rewards - mean
    return torch.where(zero, torch.zeros_like(adv), adv), zero


@ESTIMATORS.register("drgrpo")
def drgrpo() -> GroupEstimator:
    return GroupEstimator(drgrpo_advantages)
