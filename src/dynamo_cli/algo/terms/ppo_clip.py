"""The policy loss: PPO-clip with ε_low / ε_high (Clip-Higher) and optional dual-clip, the builder that picks the
run's policy term (algorithm.policy_loss: ppo_clip here, gspo.py, cispo.py), and its truncated importance correction."""
from __future__ import annotations

import torch
from torch import Tensor

from dynamo_cli.algo.importance import rollout_correction
from dynamo_cli.algo.terms.base import POLICY_LOSSES, TERMS, Weighted, policy_tokens
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories


def ppo_clip_loss(
    *, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, eps_low: float, eps_high: float,
    clip_ratio_c: float | None = None,
) -> tuple[Tensor, Tensor]:
    """PPO-clip with asymmetric range (Clip-Higher when eps_high > eps_low, DAPO arXiv 2503.14476), optionally dual-clip.

        loss = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A),  r = exp(log pi - log pi_old)
        dual-clip (clip_ratio_c = c > 1; Ye et al. 2020, arXiv 1912.09729, verl's clip_ratio_c): where A < 0 the loss
        is also capped at -c A, so a token whose ratio ran past c (a stale, far off-policy sample) passes no gradient
        instead of one growing with r. None: off.

    The log-ratio is clamped to [-20, 20] before exp (as verl) so a stale token cannot overflow.
    Returns (per_token_loss (N, L), 0 off the mask; clipped (N, L) bool: valid tokens where a clipped term is the
    active one, i.e. that token passes no gradient).
    """
    ratio = torch.exp((logprobs - old_logprobs).clamp(-20.0, 20.0))  # (N, L)
    unclipped = -advantages * ratio
    clipped_loss = -advantages * ratio.clamp(1 - eps_low, 1 + eps_high)
    loss = torch.maximum(unclipped, clipped_loss)  # -min(.,.) = max(-., -.)
    clipped = clipped_loss > unclipped
    if clip_ratio_c is not None:
        dual = dual_clipped(ratio=ratio, advantages=advantages, clip_ratio_c=clip_ratio_c)
        loss = torch.where(dual, -advantages * clip_ratio_c, loss)
        clipped = clipped | dual
    mask = mask.bool()
    return torch.where(mask, loss, 0.0), mask & clipped


def dual_clipped(*, ratio: Tensor, advantages: Tensor, clip_ratio_c: float) -> Tensor:
    """(N, L) bool: where dual-clip caps the loss at -c A: A < 0 and r > c (there -r A > -c A and the clip's
    -clip(r) A = -(1 + eps_high) A is smaller still)."""
    return (advantages < 0) & (ratio > clip_ratio_c)


class PPOClip:
    """policy_loss: PPO-clip with ε_low / ε_high (Clip-Higher), on the (modulated) token advantages; dual-clip at
    algorithm.clip_ratio_c when set (train/dual_clip_frac)."""

    name, needs = "pg_loss", frozenset()

    def __init__(self, *, eps_low: float, eps_high: float, clip_ratio_c: float | None = None):
        self.eps_low, self.eps_high, self.clip_ratio_c = eps_low, eps_high, clip_ratio_c

    def __call__(self, batch: Trajectories, out: ModelOutputs) -> tuple[Tensor, dict[str, Tensor]]:
        per_token, clipped = ppo_clip_loss(logprobs=out.logprobs, old_logprobs=batch.old_logprobs, advantages=batch.advantages,
                                           mask=policy_tokens(batch), eps_low=self.eps_low, eps_high=self.eps_high,
                                           clip_ratio_c=self.clip_ratio_c)
        metrics = {"clip_frac": clipped.float(), "approx_kl": batch.old_logprobs - out.logprobs.detach()}
        if self.clip_ratio_c is not None:
            ratio = torch.exp((out.logprobs.detach() - batch.old_logprobs).clamp(-20.0, 20.0))
            metrics["dual_clip_frac"] = (policy_tokens(batch) & dual_clipped(ratio=ratio, advantages=batch.advantages,
                                                                             clip_ratio_c=self.clip_ratio_c)).float()
        return per_token, metrics


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(*, algorithm) -> PPOClip:
    return PPOClip(eps_low=algorithm.eps_low, eps_high=algorithm.eps_high, clip_ratio_c=algorithm.clip_ratio_c)


@TERMS.register("policy_loss")
def policy_loss(cfg) -> Weighted:
    term = POLICY_LOSSES.build(cfg)  # algorithm.policy_loss: ppo_clip | gspo | cispo
    return Weighted(rollout_correction(term, cfg.algorithm), 1.0)  # rollout_is / rollout_mask, when on
