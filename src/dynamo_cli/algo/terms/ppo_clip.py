"""The policy loss: PPO-clip with ε_low / ε_high (Clip-Higher), and its truncated importance correction."""
from __future__ import annotations

import torch
from torch import Tensor

from dynamo_cli.algo.importance import RolloutCorrected
from dynamo_cli.algo.terms.base import TERMS, Weighted
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories


def ppo_clip_loss(
    *, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor]:
    """PPO-clip with asymmetric range (Clip-Higher when eps_high > eps_low, DAPO arXiv 2503.14476).

        loss = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A),  r = exp(log pi - log pi_old)

    The log-ratio is clamped to [-20, 20] before exp (as verl) so a stale token cannot overflow.
    Returns (per_token_loss (N, L), 0 on padding; clipped (N, L) bool: valid tokens where the clipped term is
    the active one, i.e. that token passes no gradient).
    """
    ratio = torch.exp((logprobs - old_logprobs).clamp(-20.0, 20.0))  # (N, L)
    unclipped = -advantages * ratio
    clipped_loss = -advantages * ratio.clamp(1 - eps_low, 1 + eps_high)
    loss = torch.maximum(unclipped, clipped_loss)  # -min(.,.) = max(-., -.)
    mask = mask.bool()
    return torch.where(mask, loss, 0.0), mask & (clipped_loss > unclipped)


class PPOClip:
    """policy_loss: PPO-clip with ε_low / ε_high (Clip-Higher), on the (modulated) token advantages."""

    name, needs = "pg_loss", frozenset()

    def __init__(self, *, eps_low: float, eps_high: float):
        self.eps_low, self.eps_high = eps_low, eps_high

    def __call__(self, batch: Trajectories, out: ModelOutputs) -> tuple[Tensor, dict[str, Tensor]]:
        per_token, clipped = ppo_clip_loss(logprobs=out.logprobs, old_logprobs=batch.old_logprobs, advantages=batch.advantages,
                                           mask=batch.loss_mask, eps_low=self.eps_low, eps_high=self.eps_high)
        return per_token, {"clip_frac": clipped.float(), "approx_kl": batch.old_logprobs - out.logprobs.detach()}


@TERMS.register("policy_loss")
def policy_loss(cfg) -> Weighted:
    term = PPOClip(eps_low=cfg.algorithm.eps_low, eps_high=cfg.algorithm.eps_high)
    if cfg.algorithm.rollout_is != "none":
        term = RolloutCorrected(term, level=cfg.algorithm.rollout_is, cap=cfg.algorithm.rollout_is_cap)
    return Weighted(term, 1.0)
