"""The KL penalty to the frozen starting policy (algorithm.kl_coef), Schulman's k3 estimator."""
from __future__ import annotations

import torch
from torch import Tensor

from dynamo_cli.algo.terms.base import TERMS, Weighted
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories

KL_CLAMP = 10.0  # verl's low_var_kl: the per-token estimate is clamped to [-10, 10]


def kl_k3(*, logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref): exp(d) - d - 1 with d = log pi_ref - log pi. (N, L), in [0, 10].

    As verl's low_var_kl: d is clamped to [-20, 20] before exp and the estimate to [-10, 10] (it is >= 0, so at 10):
    one token the policy made far less likely than the reference (d = 12: e^12 ≈ 1.6e5) would otherwise outweigh
    the rest of the batch's KL and its gradient (exp(d) - 1) with it; past the clamp that token passes none."""
    d = (ref_logprobs - logprobs).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1).clamp(-KL_CLAMP, KL_CLAMP)


class ReferenceKL:
    """kl: Schulman's k3 estimate of KL(π || π_ref) to the frozen starting policy."""

    name, needs = "kl_ref", frozenset({"ref_logprobs"})

    def __call__(self, batch: Trajectories, out: ModelOutputs) -> tuple[Tensor, dict[str, Tensor]]:
        return kl_k3(logprobs=out.logprobs, ref_logprobs=batch.ref_logprobs), {}


@TERMS.register("kl")
def kl(cfg) -> Weighted:
    return Weighted(ReferenceKL(), cfg.algorithm.kl_coef)
