"""Group-relative advantages for groups of *different* sizes, and masked reductions.

Dynamic allocation (algorithm.md, Part 1) gives every prompt its own number of rollouts n_i, so groups are
ragged: rollouts are flat (N,) tensors and `group_index` (N,) says which prompt's group each belongs to (any
order). Group statistics are gathered with index_add / scatter_reduce, never a Python loop over groups.

Groups of size 1 and groups whose rewards are all equal carry no learning signal: they get *exactly* zero
advantage and are flagged in `zero_signal` (logged as rollout/zero_signal_frac). verl instead gives a
size-1 group the raw reward as advantage.
"""
from __future__ import annotations

import torch
from torch import Tensor


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of values where mask is true (mask is read as bool; padding may hold nan/inf)."""
    masked = torch.where(mask.bool(), values, torch.zeros_like(values))
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of values where mask is true; 0 where nothing is valid (padding never enters the mean)."""
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def _group_stats(rewards: Tensor, group_index: Tensor, num_groups: int) -> tuple[Tensor, Tensor, Tensor]:
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


def _float(rewards: Tensor) -> Tensor:
    return rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())


def grpo_advantages(
    *, rewards: Tensor, group_index: Tensor, num_groups: int, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """GRPO: (r_i - mean_g) / (std_g + eps) with the unbiased std (as verl / torch.std).

    rewards (N,), group_index (N,) long in [0, num_groups). Returns (advantages (N,), zero_signal (N,) bool).
    """
    rewards = _float(rewards)
    size, mean, zero = _group_stats(rewards, group_index, num_groups)
    dev = rewards - mean  # (N,)
    sq = rewards.new_zeros(num_groups).index_add_(0, group_index, dev**2)[group_index]
    std = (sq / (size - 1).clamp(min=1)).sqrt()  # (N,) unbiased
    adv = torch.where(zero, torch.zeros_like(dev), dev / (std + eps))
    return adv, zero


def drgrpo_advantages(
    *, rewards: Tensor, group_index: Tensor, num_groups: int, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Dr. GRPO (arXiv 2503.20783): r_i - mean_g, no std normalisation. `eps` unused (same signature)."""
    rewards = _float(rewards)
    _, mean, zero = _group_stats(rewards, group_index, num_groups)
    adv = rewards - mean
    return torch.where(zero, torch.zeros_like(adv), adv), zero


def rloo_advantages(
    *, rewards: Tensor, group_index: Tensor, num_groups: int, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """RLOO: r_i - mean of the *other* rewards of its group = n/(n-1) (r_i - mean_g). `eps` unused."""
    rewards = _float(rewards)
    size, mean, zero = _group_stats(rewards, group_index, num_groups)
    adv = size / (size - 1).clamp(min=1) * (rewards - mean)
    return torch.where(zero, torch.zeros_like(adv), adv), zero


def w_reinforce_advantages(
    *, rewards: Tensor, group_index: Tensor, num_groups: int, positive_weight: float, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """W-REINFORCE (arXiv 2506.01347): REINFORCE on rewards mapped to s = 2r - 1 in [-1, 1] (0/1 -> -1/+1), no
    baseline, positive samples weighted: A = positive_weight * s if s > 0, else s. The group plays no part (an
    all-correct group still pushes up, by positive_weight), so no rollout lacks signal. `eps` unused."""
    signed = 2 * _float(rewards) - 1  # (N,)
    adv = torch.where(signed > 0, positive_weight * signed, signed)
    return adv, torch.zeros_like(adv, dtype=torch.bool)


ADVANTAGE_ESTIMATORS = {"grpo": grpo_advantages, "drgrpo": drgrpo_advantages, "rloo": rloo_advantages}
