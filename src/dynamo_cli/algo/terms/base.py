"""The loss: weighted terms (`Weighted`), their aggregation over the loss mask, and the registry of term builders."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from dynamo_cli.algo.masked import masked_sum
from dynamo_cli.protocols import LossTerm
from dynamo_cli.registry import Registry
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories

TERMS: Registry["Weighted | None"] = Registry("loss term")  # builders: (cfg: TrainConfig) -> Weighted | None
# algorithm.policy_loss: each policy term's module registers a builder (cfg: TrainConfig) -> LossTerm
POLICY_LOSSES: Registry[LossTerm] = Registry("policy loss", key=lambda cfg: cfg.algorithm.policy_loss)
AGGREGATIONS = ("token_mean", "seq_mean", "seq_mean_token_sum_norm", "group_mean")


def aggregate(*, per_token: Tensor, mask: Tensor, mode: str, num_tokens: int, num_sequences: int,
              max_length: int | None = None, row_weight: Tensor | None = None) -> Tensor:
    """Reduce a per-token loss (N, L) to a scalar.

    token_mean:              Σ_{i,t} loss / num_tokens                           (DAPO / the paper: every token weighs the same)
    seq_mean:                Σ_i (Σ_t loss_i,t / len_i) / num_sequences          (GRPO's per-sequence mean)
    seq_mean_token_sum_norm: Σ_i (Σ_t loss_i,t / max_length) / num_sequences     (Dr. GRPO: a constant length, no 1/len_i)
    group_mean:              Σ_i w_i Σ_t loss_i,t / len_i                         (w_i = 1 / (P n_g(i)): a prompt's rows averaged,
                                                                                 then the prompts; `group_row_weights`)

    num_tokens / num_sequences are the counts of the whole *mini-batch* (one optimiser step), not of this call's
    tensor, and so are the weights: then summing aggregate() over the micro-batches of a mini-batch gives exactly
    the loss and gradient of one pass over it (no 1/num_micro_batches rescaling needed). With data parallelism pass
    the global counts and multiply by the world size, since DDP averages gradients over ranks. num_sequences counts
    the rows with at least one loss token: a row dropped whole (DAPO/GRESO's uninformative groups, a masked
    truncation) carries no loss and must not shrink the others' gradient. len_i is the row's loss-mask length.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")
    if num_tokens <= 0 or num_sequences <= 0:
        raise ValueError(f"num_tokens and num_sequences must be > 0, got {num_tokens}, {num_sequences}")
    if mode == "token_mean":
        return masked_sum(per_token, mask) / num_tokens
    row_sums = masked_sum(per_token, mask, dim=1)  # (N,)
    if mode == "seq_mean_token_sum_norm":
        if not max_length or max_length <= 0:
            raise ValueError(f"seq_mean_token_sum_norm needs max_length > 0, got {max_length}")
        return row_sums.sum() / (max_length * num_sequences)
    row_means = row_sums / mask.bool().sum(dim=1).clamp(min=1)  # (N,) a row without valid tokens contributes 0
    if mode == "group_mean":
        if row_weight is None:
            raise ValueError("group_mean needs each row's weight (row_weight)")
        return (row_means * row_weight.to(row_means.dtype)).sum()
    return row_means.sum() / num_sequences


def loss_counts(loss_mask: Tensor) -> tuple[int, int]:
    """(tokens, sequences) a mini-batch's means divide by: its loss-mask tokens, and its rows with at least one. A row
    kept with an empty mask (a group DAPO/GRESO dropped, a masked truncation) is in neither: counted, it would shrink
    every other row's gradient by the kept share, a share that changes from step to step. loss_mask (N, L) bool,
    before any modulator's shaping."""
    mask = loss_mask.bool()
    return int(mask.sum()), int(mask.any(1).sum())


def group_row_weights(*, prompt_index: Tensor, carries_loss: Tensor, group_counts: Tensor) -> Tensor:
    """group_mean's row weights: w_i = 1 / (P · n_g(i)) for a row with loss tokens, 0 for one without.

    prompt_index (N,) long: each row's prompt; carries_loss (N,) bool; group_counts (G,): the rows with loss tokens of
    each prompt in the whole mini-batch (every process), so P = the prompts with at least one. Every prompt of the
    mini-batch then weighs 1/P however many rollouts the allocator gave it: allocation changes the variance of the
    estimate, not its objective (docs/algorithm.md "Our choices"). Returns (N,) float64."""
    counts = group_counts.double()
    prompts = int((counts > 0).sum())
    if prompts == 0:
        return torch.zeros(prompt_index.shape, dtype=torch.float64)
    weights = 1.0 / (prompts * counts.clamp(min=1))  # (G,)
    return torch.where(carries_loss.bool(), weights[prompt_index], 0.0)


def policy_tokens(batch: Trajectories) -> Tensor:
    """(N, L) bool: the tokens a policy term trains on: the modulator's shaped mask (Fork Tokens, Clip-Cov drop
    tokens from the policy gradient alone), else the loss mask."""
    return (batch.loss_mask if batch.policy_mask is None else batch.policy_mask).bool()


@dataclass
class Weighted:
    term: LossTerm
    weight: float


@dataclass
class Loss:
    """The weighted terms of the loss and its aggregation mode (algorithm.loss_agg)."""

    terms: list[Weighted]
    mode: str  # one of AGGREGATIONS
    max_length: int | None = None  # seq_mean_token_sum_norm's constant length: the rollouts' max_new_tokens

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
                              num_sequences=num_sequences, max_length=self.max_length, row_weight=batch.row_weight)
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
    """Every term whose builder turns it on, in the order terms/__init__.py imports them (policy loss, KL, entropy, value)."""
    return Loss(terms=[w for _, build in TERMS.items() if (w := build(cfg)) is not None], mode=cfg.algorithm.loss_agg,
                max_length=cfg.max_new_tokens)
