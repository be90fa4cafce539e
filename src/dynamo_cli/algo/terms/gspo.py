"""algorithm.policy_loss=gspo: Group Sequence Policy Optimization (Zheng et al. 2025, arXiv 2507.18071).

The importance ratio of a whole sequence, length-normalised, replaces PPO's per-token ratio:

    s_i = (π(y_i) / π_old(y_i))^(1/|y_i|) = exp( (1/|y_i|) Σ_t (log π_t − log π_old,t) )
    loss_i,t = −min(s_i,t A_i,t, clip(s_i,t, 1 − ε_low, 1 + ε_high) A_i,t)
    s_i,t = sg[s_i] · π_t / sg[π_t]        (GSPO-token: the value of s_i, the gradient of log π_t)

With one advantage per sequence (GRPO's) GSPO-token is GSPO exactly; it also takes per-token advantages (GAE, a
modulator's). Every token of a sequence is clipped together, so the clip range is ~1000× narrower than PPO's:
the paper's ε_low 3e-4 / ε_high 4e-4 (Sec. 5.1; conf/experiment/gspo.yaml), with the per-sequence mean
aggregation (algorithm.loss_agg=seq_mean). The sequence length |y_i| is the row's loss-mask length: a modulator's
dropped tokens still belong to the sequence whose ratio this is.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dynamo_cli.algo.terms.base import POLICY_LOSSES, policy_tokens
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories


def sequence_log_ratio(*, logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """(N, 1) log s_i = mean over the sequence's valid tokens of log π − log π_old; 0 for a row without any."""
    mask = mask.bool()
    log_ratio = torch.where(mask, logprobs - old_logprobs, 0.0)  # (N, L)
    return log_ratio.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)


def gspo_loss(*, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, sequence_mask: Tensor, mask: Tensor,
              eps_low: float, eps_high: float) -> tuple[Tensor, Tensor, Tensor]:
    """GSPO-token's clipped loss (arXiv 2507.18071, eq. 13).

    logprobs (N, L) differentiable; old_logprobs, advantages (N, L); sequence_mask (N, L) bool: the tokens of each
    sequence (its ratio's mean); mask (N, L) bool: the tokens that take the loss. The log-ratio is clamped at 10
    before exp, as verl's GSPO. Returns (per_token_loss (N, L), 0 off `mask`; clipped (N, L) bool: tokens whose
    clipped term is the active one; s_i (N, 1) detached)."""
    log_s = sequence_log_ratio(logprobs=logprobs.detach(), old_logprobs=old_logprobs, mask=sequence_mask)  # (N, 1)
    ratio = torch.exp((log_s + logprobs - logprobs.detach()).clamp(max=10.0))  # (N, L): value s_i, gradient of log π_t
    unclipped = -advantages * ratio
    clipped_loss = -advantages * ratio.clamp(1 - eps_low, 1 + eps_high)
    loss = torch.maximum(unclipped, clipped_loss)
    mask = mask.bool()
    return torch.where(mask, loss, 0.0), mask & (clipped_loss > unclipped), log_s.exp()


class GSPO:
    """policy_loss=gspo: the sequence-level, length-normalised ratio, clipped at [1 − ε_low, 1 + ε_high]
    (algorithm.eps_low / eps_high). Logged like PPO-clip: train/pg_loss, clip_frac (every token of a clipped
    sequence), approx_kl; and train/seq_ratio_dev, the mean |s_i − 1| (how far the sequences moved)."""

    name, needs = "pg_loss", frozenset()

    def __init__(self, *, eps_low: float, eps_high: float):
        self.eps_low, self.eps_high = eps_low, eps_high

    def __call__(self, batch: Trajectories, out: ModelOutputs) -> tuple[Tensor, dict[str, Tensor]]:
        per_token, clipped, seq_ratio = gspo_loss(logprobs=out.logprobs, old_logprobs=batch.old_logprobs, advantages=batch.advantages,
                                                  sequence_mask=batch.loss_mask, mask=policy_tokens(batch),
                                                  eps_low=self.eps_low, eps_high=self.eps_high)
        return per_token, {"clip_frac": clipped.float(), "approx_kl": batch.old_logprobs - out.logprobs.detach(),
                           "seq_ratio_dev": (seq_ratio - 1).abs().expand_as(per_token)}


@POLICY_LOSSES.register("gspo")
def gspo(*, algorithm) -> GSPO:
    return GSPO(eps_low=algorithm.eps_low, eps_high=algorithm.eps_high)
