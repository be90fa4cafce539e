"""The entropy bonus (algorithm.entropy_coef)."""
from __future__ import annotations

from torch import Tensor

from dynamo_cli.algo.terms.base import TERMS, Weighted
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories


class EntropyBonus:
    """entropy: the mean full-vocabulary entropy; its weight is -entropy_coef (a bonus lowers the loss)."""

    name, needs = "entropy_bonus", frozenset({"entropy"})

    def __call__(self, batch: Trajectories, out: ModelOutputs) -> tuple[Tensor, dict[str, Tensor]]:
        return out.entropy, {}


@TERMS.register("entropy")
def entropy(cfg) -> Weighted:
    return Weighted(EntropyBonus(), -cfg.algorithm.entropy_coef)
