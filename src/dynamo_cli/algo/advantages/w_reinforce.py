"""algorithm.advantage=w_reinforce: ±1 rewards, no baseline, positive samples weighted (arXiv 2506.01347)."""
from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from dynamo_cli.algo.advantages.base import ESTIMATORS, GroupEstimator, as_float


def w_reinforce_advantages(
    *, rewards: Tensor, group_index: Tensor, num_groups: int, positive_weight: float, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """W-REINFORCE (arXiv 2506.01347): REINFORCE on rewards mapped to s = 2r - 1 in [-1, 1] (0/1 -> -1/+1), no
    baseline, positive samples weighted: A = positive_weight * s if s > 0, else s. The group plays no part (an
    all-correct group still pushes up, by positive_weight), so no rollout lacks signal. `eps` unused."""
    signed = 2 * as_float(rewards) - 1  # (N,)
    adv = torch.where(signed > 0, positive_weight * signed, signed)
    return adv, torch.zeros_like(adv, dtype=torch.bool)


@ESTIMATORS.register("w_reinforce")
def w_reinforce(*, positive_weight: float) -> GroupEstimator:
    """positive_weight: algorithm.positive_weight, W-REINFORCE's λ."""
    return GroupEstimator(partial(w_reinforce_advantages, positive_weight=positive_weight))
