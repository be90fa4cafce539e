"""algorithm.advantage=rloo: the reward minus the mean of the group's other rewards (REINFORCE leave-one-out)."""
from __future__ import annotations

import torch
from torch import Tensor

from dynamo_cli.algo.advantages.base import ESTIMATORS, GroupEstimator, as_float, group_stats


def rloo_advantages(
    *, rewards: Tensor, group_index: Tensor, num_groups: int, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """RLOO: r_i - mean of the *other* rewards of its group = n/(n-1) (r_i - mean_g). `eps` unused."""
    rewards = as_float(rewards)
    size, mean, zero = group_stats(rewards, group_index, num_groups)
    adv = size / (size - 1).clamp(min=1) * (rewards - mean)
    return torch.where(zero, torch.zeros_like(adv), adv), zero


@ESTIMATORS.register("rloo")
def rloo() -> GroupEstimator:
    return GroupEstimator(rloo_advantages)
