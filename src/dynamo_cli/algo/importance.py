"""Truncated importance sampling for the rollout/trainer log-prob mismatch (algorithm.rollout_is).

A fast rollout engine (vLLM) samples with its own kernels, and often another precision, so the probability
μ(y_t) it sampled a token with differs from π_old(y_t), the trainer's recomputation of the same policy. The PPO
ratio is taken against π_old, so the gradient is an expectation under π_old while the data came from μ: the
update is off-policy without saying so. Truncated importance sampling (TIS; Yao et al. 2025, "Your efficient RL
framework secretly brings you off-policy RL training") reweights each token's policy loss by

    token:     w_t = min(π_old(y_t) / μ(y_t), C)
    sequence:  w   = min(Π_t π_old(y_t) / μ(y_t), C)   for every token of the sequence

The cap C bounds the variance the correction adds; the weights are constants (no gradient flows through them).
"""
from __future__ import annotations

import torch
from torch import Tensor

from dynamo_cli.protocols import LossTerm
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories

LEVELS = ("none", "token", "sequence")


def truncated_is_weights(*, trainer_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, level: str,
                         cap: float) -> tuple[Tensor, Tensor]:
    """(N, L) weights (1 off the mask) and (N, L) bool: was the weight truncated at `cap`.

    trainer_logprobs: log π_old (N, L), the trainer's; rollout_logprobs: log μ (N, L), the engine's, NaN where it
    reported none (an EOS it left out): its ratio counts as 1; mask (N, L) bool."""
    known = mask & rollout_logprobs.isfinite()
    log_ratio = torch.where(known, trainer_logprobs - rollout_logprobs, 0.0)  # (N, L)
    if level == "sequence":  # one weight per sequence: the product of its token ratios, in log space
        log_ratio = log_ratio.sum(-1, keepdim=True).expand_as(log_ratio)  # (N, L)
    elif level != "token":
        raise ValueError(f"level={level!r}: one of token, sequence")
    truncated = (log_ratio > torch.log(torch.tensor(cap, dtype=log_ratio.dtype))) & mask
    weights = torch.where(mask, log_ratio.exp().clamp(max=cap), 1.0)
    return weights.detach(), truncated


def mismatch_kl(*, trainer_logprobs: Tensor, rollout_logprobs: Tensor) -> Tensor:
    """(N, L) k3 estimate of KL(μ || π_old) per sampled token, ≥ 0 and 0 when the two agree (and where the engine
    reported no log-prob): how far the engine is from the trainer, whatever the correction does about it."""
    log_ratio = torch.nan_to_num(trainer_logprobs - rollout_logprobs, nan=0.0)  # log π_old / μ, sampled from μ
    return log_ratio.exp() - 1 - log_ratio


class RolloutCorrected:
    """algorithm.rollout_is: a policy term reweighted by truncated importance sampling of the rollout engine's samples,
    w = min(π_old/μ, cap) per token or per sequence (algo/importance.py; TIS, Yao et al. 2025). Logged: train/rollout_is_weight
    (mean weight), train/rollout_is_truncated_frac, train/rollout_mismatch_kl (KL(μ || π_old), k3)."""

    def __init__(self, term: LossTerm, *, level: str, cap: float):
        self.term, self.level, self.cap = term, level, cap
        self.name, self.needs = term.name, term.needs

    def __call__(self, batch: Trajectories, out: ModelOutputs) -> tuple[Tensor, dict[str, Tensor]]:
        per_token, metrics = self.term(batch, out)
        weights, truncated = truncated_is_weights(trainer_logprobs=batch.old_logprobs, rollout_logprobs=batch.rollout_logprobs,
                                                  mask=batch.loss_mask, level=self.level, cap=self.cap)
        return per_token * weights, {**metrics, "rollout_is_weight": weights, "rollout_is_truncated_frac": truncated.float(),
                                     "rollout_mismatch_kl": mismatch_kl(trainer_logprobs=batch.old_logprobs,
                                                                        rollout_logprobs=batch.rollout_logprobs)}
