"""modulator=clip_cov: random high-covariance tokens leave the loss (Cui et al., arXiv 2505.22617, Clip-Cov)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dynamo_cli.algo.masked import masked_mean
from dynamo_cli.config.base import check
from dynamo_cli.modulation.base import MODULATORS, ModulatorConfig, TokenBaseline, TokenShaping, share_of, token_covariance


@dataclass
class ClipCovModulatorConfig(ModulatorConfig):
    """Clip-Cov (Cui et al., arXiv 2505.22617): random high-covariance tokens leave the loss (defaults: the paper's / verl's)."""

    name: str = "clip_cov"
    fraction: float = 2.0e-4  # r: tokens detached per valid token of the mini-batch (at least 1)
    cov_low: float = 1.0  # ω_low: candidates have covariance above this
    cov_high: float = 5.0  # ω_high: ... and below this

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.fraction <= 1, f"modulator.fraction={self.fraction} must be in (0, 1]")
        check(self.cov_low < self.cov_high, f"modulator.cov_low={self.cov_low} must be < modulator.cov_high={self.cov_high}")


def clip_cov_select(*, covariance: Tensor, candidates: Tensor, fraction: float, low: float, high: float,
                    num_valid: int, generator: torch.Generator) -> Tensor:
    """Clip-Cov (arXiv 2505.22617): max(1, int(fraction * num_valid)) tokens drawn uniformly at random among the
    candidates whose covariance lies in (low, high). (N, L) bool; fewer if the band holds fewer."""
    band = candidates & (covariance > low) & (covariance < high)  # (N, L)
    where = band.flatten().nonzero().squeeze(1)  # (K,) flat indices, row-major
    take = min(max(1, int(fraction * num_valid)), where.numel())
    chosen = where[torch.randperm(where.numel(), generator=generator)[:take].to(where.device)]
    return torch.zeros_like(band).flatten().index_fill_(0, chosen, True).view_as(band)


@MODULATORS.register("clip_cov", schema=ClipCovModulatorConfig)
class ClipCovModulator(TokenBaseline):
    """Clip-Cov (arXiv 2505.22617): a random `fraction` of the tokens that PPO-clip still passes and whose covariance
    lies in (cov_low, cov_high) leave the loss (their gradient is detached)."""

    def __init__(self, *, fraction: float, cov_low: float, cov_high: float, eps_low: float, eps_high: float):
        self.fraction, self.cov_low, self.cov_high = fraction, cov_low, cov_high
        self.eps_low, self.eps_high = eps_low, eps_high

    def shape(self, *, advantages, mask, entropy, logprobs, old_logprobs, generator) -> TokenShaping:
        if generator is None:
            raise ValueError("ClipCovModulator draws its tokens at random: pass a generator")
        ratio = torch.exp((torch.where(mask, logprobs - old_logprobs, 0.0)).clamp(-20.0, 20.0))  # (N, L) as the loss
        clipped = ((advantages > 0) & (ratio > 1 + self.eps_high)) | ((advantages < 0) & (ratio < 1 - self.eps_low))
        covariance = token_covariance(advantages=advantages, logprobs=logprobs, mask=mask)
        detached = clip_cov_select(covariance=covariance, candidates=mask & ~clipped, fraction=self.fraction,
                                   low=self.cov_low, high=self.cov_high, num_valid=int(mask.sum()), generator=generator)
        keep = mask & ~detached
        return TokenShaping(advantages=torch.where(keep, advantages, 0.0), loss_mask=keep,
                            metrics={"mod/detached_frac": share_of(detached, mask), "mod/cov_mean": float(masked_mean(covariance, mask))},
                            distributions={"covariance": covariance[mask]})
