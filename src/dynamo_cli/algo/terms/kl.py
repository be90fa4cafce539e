"""The KL penalty to the frozen starting policy (algorithm.kl_coef), Schulman's k3 estimator."""
from __future__ import annotations

import torch
from torch import Tensor

from dynamo_cli.algo.terms.base import TERMS, Weighted
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories


def kl_k3(*, logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref): exp(d) - d - 1 with d = log pi_ref - log pi. (N, L), >= 0."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


class ReferenceKL:
    """kl: Schulman's k3 estimate of KL(π || π_ref) to the frozen starting policy."""

    name, needs = "kl_ref", frozenset({"ref_logprobs"})

    def __call__(self, batch: Trajectories, out: ModelOutputs) -> tuple[Tensor, dict[str, Tensor]]:
        return kl_k3(logprobs=out.logprobs, ref_logprobs=batch.ref_logprobs), {}


@TERMS.register("kl")
def kl(cfg) -> Weighted:
    return Weighted(ReferenceKL(), cfg.algorithm.kl_coef)
