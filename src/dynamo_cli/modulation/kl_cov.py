"""modulator=kl_cov: the highest-covariance tokens get a |log-ratio| penalty (Cui et al., arXiv 2505.22617, KL-Cov)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dynamo_cli.algo.masked import masked_mean
from dynamo_cli.algo.terms.base import Weighted
from dynamo_cli.config.base import check, positive
from dynamo_cli.modulation.base import MODULATORS, ModulatorConfig, TokenBaseline, TokenShaping, share_of, token_covariance
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories


@dataclass
class KLCovModulatorConfig(ModulatorConfig):
    """KL-Cov (Cui et al., arXiv 2505.22617): the top-k covariance tokens get a penalty coef·|log π − log π_old|."""

    name: str = "kl_cov"
    # k: share of a mini-batch's valid tokens penalised, highest covariance first (at least 1). The authors' 7B script's
    # 2e-3 (their 32B script: 2e-4): at our mini-batches of a few thousand tokens 2e-4 penalises a single token
    fraction: float = 2.0e-3
    coef: float = 1.0  # β: weight of the |log-ratio| penalty (train/kl_cov)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.fraction <= 1, f"modulator.fraction={self.fraction} must be in (0, 1]")
        positive("modulator.coef", self.coef)


def kl_cov_select(*, covariance: Tensor, mask: Tensor, fraction: float) -> Tensor:
    """KL-Cov (arXiv 2505.22617): the max(1, int(fraction * M)) valid tokens of highest covariance, M valid tokens.
    (N, L) bool; nothing when there is no valid token."""
    num_valid = int(mask.sum())
    if num_valid == 0:
        return torch.zeros_like(mask)
    k = max(1, int(fraction * num_valid))
    scores = torch.where(mask, covariance, -torch.inf).flatten()
    return torch.zeros_like(mask).flatten().index_fill_(0, scores.topk(k).indices, True).view_as(mask)


class CovarianceKL:
    """KL-Cov's penalty (arXiv 2505.22617): |log pi - log pi_old| on the tokens a modulator selected
    (`batch.extra_mask`), 0 elsewhere; aggregated over the loss mask like every term, so with token_mean it is
    sum over selected tokens / all tokens, as the paper's per-token replacement of the loss on those tokens."""

    name, needs = "kl_cov", frozenset()

    def __call__(self, batch: Trajectories, out: ModelOutputs) -> tuple[Tensor, dict[str, Tensor]]:
        return torch.where(batch.extra_mask, (out.logprobs - batch.old_logprobs).abs(), 0.0), {}


@MODULATORS.register("kl_cov", schema=KLCovModulatorConfig)
class KLCovModulator(TokenBaseline):
    """KL-Cov (arXiv 2505.22617): the top `fraction` highest-covariance tokens get the extra term `penalty`
    (CovarianceKL above, coef * |log pi - log pi_old|) for this mini-batch."""

    def __init__(self, *, fraction: float, coef: float):
        self.fraction, self.penalty = fraction, Weighted(CovarianceKL(), coef)

    def shape(self, *, advantages, mask, entropy, logprobs, old_logprobs, generator) -> TokenShaping:
        covariance = token_covariance(advantages=advantages, logprobs=logprobs, mask=mask)
        selected = kl_cov_select(covariance=covariance, mask=mask, fraction=self.fraction)
        return TokenShaping(advantages=advantages, loss_mask=mask, extra_terms=[self.penalty], extra_mask=selected,
                            metrics={"mod/penalised_frac": share_of(selected, mask), "mod/cov_mean": float(masked_mean(covariance, mask))},
                            distributions={"covariance": covariance[mask]})
