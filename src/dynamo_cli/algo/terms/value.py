"""The critic's clipped value loss (critic.value_coef), with algorithm.advantage=gae."""
from __future__ import annotations

import torch
from torch import Tensor

from dynamo_cli.algo.terms.base import TERMS, Weighted
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories


def value_loss(*, values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """PPO's clipped value loss (Schulman et al. 2017; the clip as in OpenAI baselines' ppo2 and verl's critic):

        loss = 0.5 · max((V − G)², (V_old + clip(V − V_old, −ε_v, ε_v) − G)²)      ε_v = clip; 0: no clipping

    Returns (per_token_loss (N, L), 0 on padding; clipped (N, L) bool: valid tokens where the clipped term is the
    larger one, so that token's value passes no gradient)."""
    unclipped = (values - returns) ** 2
    if clip > 0:
        clipped_values = old_values + (values - old_values).clamp(-clip, clip)
        clipped = (clipped_values - returns) ** 2
        loss, active = torch.maximum(unclipped, clipped), clipped > unclipped
    else:
        loss, active = unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    mask = mask.bool()
    return torch.where(mask, 0.5 * loss, 0.0), mask & active


class ValueLoss:
    """value: the critic's clipped regression on the GAE returns (losses.value_loss); its weight is critic.value_coef.
    Logged as train/value_loss, with the share of value-clipped tokens (vf_clip_frac) and the mean value."""

    name, needs = "value_loss", frozenset({"values"})

    def __init__(self, *, clip: float):
        self.clip = clip

    def __call__(self, batch: Trajectories, out: ModelOutputs) -> tuple[Tensor, dict[str, Tensor]]:
        per_token, clipped = value_loss(values=out.values, old_values=batch.values, returns=batch.returns,
                                        mask=batch.loss_mask, clip=self.clip)
        return per_token, {"vf_clip_frac": clipped.float(), "value_mean": out.values.detach()}


@TERMS.register("value")
def value(cfg) -> Weighted | None:
    if cfg.critic.name == "none":  # no critic: no value loss, and no train/value_loss metric
        return None
    return Weighted(ValueLoss(clip=cfg.critic.value_clip), cfg.critic.value_coef)
