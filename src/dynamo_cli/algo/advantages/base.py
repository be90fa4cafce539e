"""What the estimators share: their registry, the ragged group statistics, and the estimator that puts a
sequence advantage on every policy token.

Every estimator returns (advantages (N, L) of this process's rows, returns (N, L) or None, sequence advantages (B,)
for logs, zero_signal (B,) bool). Group estimators need the whole group, hence the step's global rewards (B,); `rows`
is this process's share.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dynamo_cli.registry import Registry
from dynamo_cli.rollout.trajectory import Trajectories

ESTIMATORS = Registry("advantage estimator", key=lambda algorithm: algorithm.advantage)  # built from AlgorithmConfig's fields


def group_stats(rewards: Tensor, group_index: Tensor, num_groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per rollout: (group size (N,), group mean (N,), zero_signal (N,) bool)."""
    if rewards.shape != group_index.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_index {tuple(group_index.shape)} must be (N,)")
    size = rewards.new_zeros(num_groups).index_add_(0, group_index, torch.ones_like(rewards))
    total = rewards.new_zeros(num_groups).index_add_(0, group_index, rewards)
    mean = total / size.clamp(min=1)  # (G,)
    # all-equal is tested on max == min, not on a float std that may come out 1e-17 instead of 0
    hi = rewards.new_full((num_groups,), -torch.inf).scatter_reduce(0, group_index, rewards, "amax")
    lo = rewards.new_full((num_groups,), torch.inf).scatter_reduce(0, group_index, rewards, "amin")
    zero = (size < 2) | (hi == lo)  # (G,)
    return size[group_index], mean[group_index], zero[group_index]


def as_float(rewards: Tensor) -> Tensor:
    return rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())


class GroupEstimator:
    """A group-relative estimator (GRPO, Dr. GRPO, RLOO): one advantage per sequence, broadcast over its tokens."""

    def __init__(self, advantages_fn):
        self.advantages_fn = advantages_fn  # (rewards (B,), group_index (B,), num_groups) -> (advantages (B,), zero_signal (B,))

    def __call__(self, batch: Trajectories, *, rewards: Tensor, group_index: Tensor, num_groups: int,
                 rows: slice) -> tuple[Tensor, None, Tensor, Tensor]:
        sequence, zero_signal = self.advantages_fn(rewards=rewards, group_index=group_index, num_groups=num_groups)  # (B,)
        tokens = sequence[rows][:, None] * batch.loss_mask  # (N, L): the sequence advantage on every policy token
        return tokens, None, sequence, zero_signal
