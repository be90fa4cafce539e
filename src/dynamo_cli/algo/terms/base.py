"""The loss: weighted terms (`Weighted`), their aggregation over the loss mask, and the registry of term builders."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

from dynamo_cli.algo.masked import masked_sum
from dynamo_cli.protocols import LossTerm
from dynamo_cli.registry import Registry
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories

TERMS: Registry["Weighted | None"] = Registry("loss term")  # builders: (cfg: TrainConfig) -> Weighted | None
AGGREGATIONS = ("token_mean", "seq_mean")


def aggregate(*, per_token: Tensor, mask: Tensor, mode: str, num_tokens: int, num_sequences: int) -> Tensor:
    """Reduce a per-token loss (N, L) to a scalar.

    token_mean: sum_{i,t} loss / num_tokens                      (DAPO / the paper: every token weighs the same)
    seq_mean:   sum_i (sum_t loss_i,t / len_i) / num_sequences     (GRPO's per-sequence mean)

    num_tokens / num_sequences are the counts of the whole *mini-batch* (one optimiser step), not of this
    call's tensor: then summing aggregate() over the micro-batches of a mini-batch gives exactly the loss and
    gradient of one pass over it (no 1/num_micro_batches rescaling needed). With data parallelism pass the
    global counts and multiply by the world size, since DDP averages gradients over ranks.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")
    if num_tokens <= 0 or num_sequences <= 0:
        raise ValueError(f"num_tokens and num_sequences must be > 0, got {num_tokens}, {num_sequences}")
    if mode == "token_mean":
        return masked_sum(per_token, mask) / num_tokens
    lengths = mask.bool().sum(dim=1).clamp(min=1)  # (N,) a sequence without valid tokens contributes 0
    return (masked_sum(per_token, mask, dim=1) / lengths).sum() / num_sequences


@dataclass
class Weighted:
    term: LossTerm
    weight: float


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
    """Every term whose builder turns it on, in the order terms/__init__.py imports them (policy loss, KL, entropy, value)."""
    return Loss(terms=[w for _, build in TERMS.items() if (w := build(cfg)) is not None], mode=cfg.algorithm.loss_agg)
