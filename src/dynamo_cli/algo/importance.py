"""The rollout/trainer log-prob mismatch: truncated importance sampling (algorithm.rollout_is), masked importance
sampling (algorithm.rollout_mask), and the mismatch statistics logged every step.

A rollout engine samples with its own kernels, and often another precision (vLLM's bf16 kernels; rollout=hf's copy of
the weights in model.dtype while the trainer autocasts over float32 masters), so the probability μ(y_t) it sampled a
token with differs from π_old(y_t), the trainer's recomputation of the same policy. The PPO ratio is taken against
π_old, so the gradient is an expectation under π_old while the data came from μ: the update is off-policy without
saying so. Both sides are log-softmax(logits / temperature) of the sampled token, before top-p (rollout/hf.py, and the
vLLM logprobs mode that matches it, config/rollout.py), so the ratio measures the engines and nothing else.

Truncated importance sampling (TIS; Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
training") reweights each token's policy loss by

    token:     w_t = min(π_old(y_t) / μ(y_t), C)
    sequence:  w   = min(Π_t π_old(y_t) / μ(y_t), C)   for every token of the sequence

Masked importance sampling (verl's rollout correction, its rejection mode) drops what is too far off instead:

    token:     a token whose π_old/μ leaves [lo, hi] gets no loss
    sequence:  a sequence whose Π_t π_old/μ leaves [lo, hi] gets none on any of its tokens

A dropped token keeps its place in the aggregation's denominator, as a modulator's dropped token does (stages/update.py
counts the loss mask before shaping): the correction changes which tokens pull, not the scale of the others. The
weights and masks are constants (no gradient flows through them). The cap C and the bounds bound the variance.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from dynamo_cli.protocols import LossTerm
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories

LEVELS = ("none", "token", "sequence")


def log_ratios(*, trainer_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, level: str) -> Tensor:
    """(N, L) log π_old/μ per token (level token) or the sequence's Σ_t of them on each of its tokens (level sequence);
    0 off the mask and where either side is unknown (NaN: a log-prob the engine did not report)."""
    known = mask.bool() & rollout_logprobs.isfinite() & trainer_logprobs.isfinite()
    log_ratio = torch.where(known, trainer_logprobs - rollout_logprobs, 0.0)  # (N, L)
    if level == "sequence":  # one value per sequence: the product of its token ratios, in log space
        return log_ratio.sum(-1, keepdim=True).expand_as(log_ratio)  # (N, L)
    if level != "token":
        raise ValueError(f"level={level!r}: one of token, sequence")
    return log_ratio


def truncated_is_weights(*, trainer_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, level: str,
                         cap: float) -> tuple[Tensor, Tensor]:
    """(N, L) weights (1 off the mask) and (N, L) bool: was the weight truncated at `cap`.

    trainer_logprobs: log π_old (N, L), the trainer's; rollout_logprobs: log μ (N, L), the engine's, NaN where it
    reported none: its ratio counts as 1; mask (N, L) bool."""
    mask = mask.bool()
    log_ratio = log_ratios(trainer_logprobs=trainer_logprobs, rollout_logprobs=rollout_logprobs, mask=mask, level=level)
    truncated = (log_ratio > math.log(cap)) & mask
    weights = torch.where(mask, log_ratio.exp().clamp(max=cap), 1.0)
    return weights.detach(), truncated


def rejection_mask(*, trainer_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, level: str,
                   bounds: tuple[float, float]) -> Tensor:
    """(N, L) bool: the policy tokens whose ratio (the token's, or its sequence's product: `level`) lies in
    [bounds[0], bounds[1]]; False off the mask. A token whose engine log-prob is unknown counts as ratio 1 (kept)."""
    mask = mask.bool()
    log_ratio = log_ratios(trainer_logprobs=trainer_logprobs, rollout_logprobs=rollout_logprobs, mask=mask, level=level)
    lo, hi = bounds
    return mask & (log_ratio >= math.log(lo)) & (log_ratio <= math.log(hi))


def mismatch_kl(*, trainer_logprobs: Tensor, rollout_logprobs: Tensor) -> Tensor:
    """(N, L) k3 estimate of KL(μ || π_old) per sampled token, ≥ 0 and 0 when the two agree (and where the engine
    reported no log-prob): how far the engine is from the trainer, whatever the correction does about it."""
    log_ratio = torch.nan_to_num(trainer_logprobs - rollout_logprobs, nan=0.0)  # log π_old / μ, sampled from μ
    return log_ratio.exp() - 1 - log_ratio


def mismatch_sums(*, trainer_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, is_level: str, cap: float,
                  mask_level: str, bounds: tuple[float, float]) -> dict[str, float]:
    """This process's share of the step's mismatch statistics, over the policy tokens where both log-probs are known:
    sums and counts (added over processes) and the extreme token ratios (max/min over processes). A correction that is
    off is measured as its token level would act (what turning it on would do). `mismatch_metrics` finishes them."""
    known = mask.bool() & rollout_logprobs.isfinite() & trainer_logprobs.isfinite()
    ratio = (trainer_logprobs - rollout_logprobs).exp()  # (N, L) token ratios π_old / μ
    _, truncated = truncated_is_weights(trainer_logprobs=trainer_logprobs, rollout_logprobs=rollout_logprobs, mask=known,
                                        level=is_level if is_level != "none" else "token", cap=cap)
    kept = rejection_mask(trainer_logprobs=trainer_logprobs, rollout_logprobs=rollout_logprobs, mask=known,
                          level=mask_level if mask_level != "none" else "token", bounds=bounds)
    kl = mismatch_kl(trainer_logprobs=trainer_logprobs, rollout_logprobs=rollout_logprobs)
    return {"tokens": float(known.sum()), "kl": float(kl[known].sum()), "truncated": float(truncated.sum()),
            "masked": float((known & ~kept).sum()),
            "ratio_max": float(ratio[known].max()) if known.any() else -math.inf,
            "ratio_min": float(ratio[known].min()) if known.any() else math.inf}


def mismatch_metrics(shares: list[dict[str, float]]) -> dict[str, float]:
    """rollout/mismatch_* of every process's `mismatch_sums`: the mean k3 KL(μ || π_old) per token, the largest and
    smallest token ratio π_old/μ, and the share of tokens TIS truncates and the mask drops. {} without known tokens."""
    tokens = sum(s["tokens"] for s in shares)
    if tokens == 0:
        return {}
    return {"rollout/mismatch_kl": sum(s["kl"] for s in shares) / tokens,
            "rollout/mismatch_ratio_max": max(s["ratio_max"] for s in shares),
            "rollout/mismatch_ratio_min": min(s["ratio_min"] for s in shares),
            "rollout/mismatch_truncated_frac": sum(s["truncated"] for s in shares) / tokens,
            "rollout/mismatch_masked_frac": sum(s["masked"] for s in shares) / tokens}


def step_mismatch(batch: Trajectories, algorithm, *, gather_objects) -> dict[str, float]:
    """The step's mismatch metrics over every process's policy tokens (`gather_objects`: DataParallel's), once the
    update has filled log π_old; {} when the engine reported no log-probs (greedy decoding, a multi-turn episode)."""
    if batch.rollout_logprobs is None or batch.old_logprobs is None:
        return {}
    share = mismatch_sums(trainer_logprobs=batch.old_logprobs, rollout_logprobs=batch.rollout_logprobs, mask=batch.loss_mask,
                          is_level=algorithm.rollout_is, cap=algorithm.rollout_is_cap, mask_level=algorithm.rollout_mask,
                          bounds=tuple(algorithm.rollout_mask_bounds))
    return mismatch_metrics(gather_objects(share))


class RolloutCorrected:
    """algorithm.rollout_is / rollout_mask: a policy term reweighted by truncated importance sampling of the rollout engine's
    samples, w = min(π_old/μ, cap) per token or per sequence, and/or with the tokens (sequences) whose ratio leaves the
    bounds dropped (algo/importance.py). Logged with the term: train/rollout_is_weight (mean weight),
    train/rollout_is_truncated_frac, train/rollout_mask_frac (share dropped), train/rollout_mismatch_kl."""

    def __init__(self, term: LossTerm, *, level: str, cap: float, mask_level: str = "none",
                 bounds: tuple[float, float] = (0.5, 2.0)):
        self.term, self.level, self.cap, self.mask_level, self.bounds = term, level, cap, mask_level, tuple(bounds)
        self.name, self.needs = term.name, term.needs

    def __call__(self, batch: Trajectories, out: ModelOutputs) -> tuple[Tensor, dict[str, Tensor]]:
        if batch.rollout_logprobs is None:
            raise ValueError("algorithm.rollout_is/rollout_mask: the rollout engine reported no log-probs for this batch")
        per_token, metrics = self.term(batch, out)
        logprobs = dict(trainer_logprobs=batch.old_logprobs, rollout_logprobs=batch.rollout_logprobs, mask=batch.loss_mask)
        if self.level != "none":
            weights, truncated = truncated_is_weights(**logprobs, level=self.level, cap=self.cap)
            per_token = per_token * weights
            metrics = {**metrics, "rollout_is_weight": weights, "rollout_is_truncated_frac": truncated.float()}
        if self.mask_level != "none":
            kept = rejection_mask(**logprobs, level=self.mask_level, bounds=self.bounds)
            per_token = torch.where(kept, per_token, 0.0)
            metrics = {**metrics, "rollout_mask_frac": (batch.loss_mask.bool() & ~kept).float()}
        return per_token, {**metrics, "rollout_mismatch_kl": mismatch_kl(trainer_logprobs=batch.old_logprobs,
                                                                         rollout_logprobs=batch.rollout_logprobs)}


def rollout_correction(term: LossTerm, algorithm) -> LossTerm:
    """`term` corrected as algorithm.rollout_is / rollout_mask ask (RolloutCorrected), or `term` itself when both are none."""
    if algorithm.rollout_is == "none" and algorithm.rollout_mask == "none":
        return term
    return RolloutCorrected(term, level=algorithm.rollout_is, cap=algorithm.rollout_is_cap, mask_level=algorithm.rollout_mask,
                            bounds=tuple(algorithm.rollout_mask_bounds))
