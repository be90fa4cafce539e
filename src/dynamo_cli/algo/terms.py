"""The loss as a list of weighted terms, aggregated by one function.

    loss = Σ_k  w_k · aggregate(term_k(batch, outputs), batch.loss_mask)

A term is `(batch: Trajectories, out: ModelOutputs) -> (per-token loss (n, L), per-token metrics)`
(protocols.LossTerm); the maths lives in algo/losses.py. `build_loss` asks every registered term builder for its
term: a builder returns None when its term is off, or a term with weight 0 whose metric is still logged (0)
because it is part of the metrics contract (train/kl_ref, train/entropy_bonus). A term with weight 0 costs
nothing: it is never computed.

Adding a term: a class here (or in its own module) with `name`, `needs` and `__call__`, a builder registered
in TERMS that reads its coefficient from the schema, a test with hand-worked values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from dynamo_cli.algo.advantages import masked_sum
from dynamo_cli.algo.importance import mismatch_kl, truncated_is_weights
from dynamo_cli.algo.losses import aggregate, kl_k3, ppo_clip_loss, value_loss
from dynamo_cli.protocols import LossTerm
from dynamo_cli.registry import Registry
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories

TERMS: Registry["Weighted | None"] = Registry("loss term")  # builders: (cfg: TrainConfig) -> Weighted | None


class PPOClip:
    """policy_loss: PPO-clip with ε_low / ε_high (Clip-Higher), on the (modulated) token advantages."""

    name, needs = "pg_loss", frozenset()

    def __init__(self, *, eps_low: float, eps_high: float):
        self.eps_low, self.eps_high = eps_low, eps_high

    def __call__(self, batch: Trajectories, out: ModelOutputs) -> tuple[Tensor, dict[str, Tensor]]:
        per_token, clipped = ppo_clip_loss(logprobs=out.logprobs, old_logprobs=batch.old_logprobs, advantages=batch.advantages,
                                           mask=batch.loss_mask, eps_low=self.eps_low, eps_high=self.eps_high)
        return per_token, {"clip_frac": clipped.float(), "approx_kl": batch.old_logprobs - out.logprobs.detach()}


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


class ReferenceKL:
    """kl: Schulman's k3 estimate of KL(π || π_ref) to the frozen starting policy."""

    name, needs = "kl_ref", frozenset({"ref_logprobs"})

    def __call__(self, batch: Trajectories, out: ModelOutputs) -> tuple[Tensor, dict[str, Tensor]]:
        return kl_k3(logprobs=out.logprobs, ref_logprobs=batch.ref_logprobs), {}


class EntropyBonus:
    """entropy: the mean full-vocabulary entropy; its weight is -entropy_coef (a bonus lowers the loss)."""

    name, needs = "entropy_bonus", frozenset({"entropy"})

    def __call__(self, batch: Trajectories, out: ModelOutputs) -> tuple[Tensor, dict[str, Tensor]]:
        return out.entropy, {}


class CovarianceKL:
    """KL-Cov's penalty (arXiv 2505.22617): |log pi - log pi_old| on the tokens a modulator selected
    (`batch.extra_mask`), 0 elsewhere; aggregated over the loss mask like every term, so with token_mean it is
    sum over selected tokens / all tokens, as the paper's per-token replacement of the loss on those tokens."""

    name, needs = "kl_cov", frozenset()

    def __call__(self, batch: Trajectories, out: ModelOutputs) -> tuple[Tensor, dict[str, Tensor]]:
        return torch.where(batch.extra_mask, (out.logprobs - batch.old_logprobs).abs(), 0.0), {}


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


@dataclass
class Weighted:
    term: LossTerm
    weight: float


@TERMS.register("policy_loss")
def _policy_loss(cfg) -> Weighted:
    term = PPOClip(eps_low=cfg.algorithm.eps_low, eps_high=cfg.algorithm.eps_high)
    if cfg.algorithm.rollout_is != "none":
        term = RolloutCorrected(term, level=cfg.algorithm.rollout_is, cap=cfg.algorithm.rollout_is_cap)
    return Weighted(term, 1.0)


@TERMS.register("kl")
def _kl(cfg) -> Weighted:
    return Weighted(ReferenceKL(), cfg.algorithm.kl_coef)


@TERMS.register("entropy")
def _entropy(cfg) -> Weighted:
    return Weighted(EntropyBonus(), -cfg.algorithm.entropy_coef)


@TERMS.register("value")
def _value(cfg) -> Weighted | None:
    if cfg.critic.name == "none":  # no critic: no value loss, and no train/value_loss metric
        return None
    return Weighted(ValueLoss(clip=cfg.critic.value_clip), cfg.critic.value_coef)


@dataclass
class Loss:
    """The weighted terms of the loss and its aggregation mode (algorithm.loss_agg)."""

    terms: list[Weighted]
    mode: str  # token_mean | seq_mean

    def needs(self, what: str, extra: Sequence[Weighted] = ()) -> bool:
        return any(what in w.term.needs for w in [*self.terms, *extra] if w.weight != 0)

    def metric_names(self) -> list[str]:
        """Logged every step, 0 for a term with weight 0."""
        return ["loss", *(w.term.name for w in self.terms)]

    def __call__(self, batch: Trajectories, out: ModelOutputs, *, num_tokens: int, num_sequences: int,
                 extra: Sequence[Weighted] = ()) -> tuple[Tensor, dict[str, float]]:
        """(scalar loss, metrics): each term's aggregate under its name, each term metric as its sum over the
        loss mask / num_tokens (this micro-batch's share of the mini-batch's token mean). `extra`: terms a
        modulator adds for this mini-batch.

        num_tokens / num_sequences count the whole mini-batch over every process (see losses.aggregate), so
        the micro-batch losses of a mini-batch sum to its loss."""
        loss, metrics = None, {}
        for w in [*self.terms, *extra]:
            if w.weight == 0:
                continue
            per_token, token_metrics = w.term(batch, out)
            value = aggregate(per_token=per_token, mask=batch.loss_mask, mode=self.mode, num_tokens=num_tokens,
                              num_sequences=num_sequences)
            weighted = value if w.weight == 1.0 else w.weight * value
            loss = weighted if loss is None else loss + weighted
            metrics[w.term.name] = value.item()
            for key, per_token_metric in token_metrics.items():
                metrics[key] = float(masked_sum(per_token_metric, batch.loss_mask)) / max(num_tokens, 1)
        if loss is None:
            raise ValueError("the loss has no term with a non-zero weight")
        metrics["loss"] = loss.item()
        return loss, metrics


def build_loss(cfg) -> Loss:
    """Every term whose builder turns it on, in registration order (policy loss, KL, entropy, value)."""
    return Loss(terms=[w for _, build in TERMS.items() if (w := build(cfg)) is not None], mode=cfg.algorithm.loss_agg)
