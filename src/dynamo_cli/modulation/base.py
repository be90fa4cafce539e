"""What every modulator shares: the schema's scope, the TokenShaping a modulator returns, the scope reductions
(H_min, H_max, max |dH| over a normalisation scope), and the registry of the `modulator` group.

All tensors are (N, L): N sequences, L response positions, `mask` (bool) true on valid (non-padding) tokens.
`scope_index` (N,) long puts each sequence in a normalisation scope: zeros(N) = the whole batch passed in,
arange(N) = per sequence, micro-batch ids = per micro-batch (the reference). Padding never enters a min, max or mean.
`scope_sync`, when a scope spans several processes (data parallelism), combines each scope's extremum across
them: `scope_sync(per_scope_values, "amax" | "amin")` returns the element-wise max/min over processes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from omegaconf import MISSING
from torch import Tensor

from dynamo_cli.algo.masked import masked_mean
from dynamo_cli.config.base import GroupConfig, check, one_of
from dynamo_cli.registry import Registry

MODULATORS = Registry("modulator")
SCOPES = ("micro_batch", "mini_batch", "sequence")  # where a modulator's min/max normalisations are taken


@dataclass
class ModulatorConfig(GroupConfig):
    """Fields every modulator shares."""

    name: str = MISSING
    scope: str = "mini_batch"  # where H_min/H_max and max|ΔH| are taken: micro_batch (per process) | mini_batch | sequence

    def __post_init__(self) -> None:
        one_of("modulator.scope", self.scope, SCOPES)

    def check_run(self, run) -> None:
        check(self.scope != "micro_batch" or run.algorithm.micro_batch_size != "auto",
              "modulator.scope=micro_batch needs an explicit algorithm.micro_batch_size (auto follows free memory, "
              "which would change the normalisation scope from machine to machine)")


@dataclass
class TokenShaping:
    advantages: Tensor  # (N, L) modulated advantages, 0 on padding
    loss_mask: Tensor  # (N, L) bool, tokens that enter the loss
    metrics: dict[str, float] = field(default_factory=dict)  # mod/...
    distributions: dict[str, Tensor] = field(default_factory=dict)  # 1-D valid-token values, for histograms
    extra_terms: list = field(default_factory=list)  # loss terms (algo.terms.Weighted) this mini-batch adds, e.g. KL-Cov
    extra_mask: Tensor | None = None  # (N, L) bool: the tokens an extra term acts on (Trajectories.extra_mask)


def fp32_detached(t: Tensor | None) -> Tensor | None:
    """Detached, at least float32 (bf16 entropies would quantise the min/max normalisations)."""
    return None if t is None else t.detach().to(torch.promote_types(t.dtype, torch.float32))


ScopeSync = Callable[[Tensor, str], Tensor]


def scope_reduce(values: Tensor, mask: Tensor, scope_index: Tensor, reduce: str, sync: ScopeSync | None = None) -> Tensor:
    """max ("amax") or min ("amin") of values over the valid tokens of each sequence's scope -> (N, 1)."""
    fill = -torch.inf if reduce == "amax" else torch.inf
    masked = torch.where(mask, values, torch.full_like(values, fill))  # (N, L)
    per_seq = masked.amax(dim=1) if reduce == "amax" else masked.amin(dim=1)  # (N,)
    num_scopes = int(scope_index.max()) + 1  # a CPU-GPU sync point, once per factor
    per_scope = torch.full((num_scopes,), fill, dtype=values.dtype, device=values.device)
    per_scope = per_scope.scatter_reduce(0, scope_index, per_seq, reduce)  # (S,)
    if sync is not None:
        per_scope = sync(per_scope, reduce)
    return per_scope[scope_index].unsqueeze(1)  # (N, 1)


class TokenBaseline:
    """The shared call signature; subclasses implement `shape(advantages, mask, entropy, logprobs, old_logprobs, generator)`."""

    needs_policy_stats = True  # they read the current policy's entropy or log-probs

    @torch.no_grad()
    def __call__(self, *, advantages: Tensor, mask: Tensor, entropy: Tensor | None = None, logprobs: Tensor | None = None,
                 old_logprobs: Tensor | None = None, scope_index: Tensor | None = None, scope_sync: ScopeSync | None = None,
                 generator: torch.Generator | None = None) -> TokenShaping:
        mask = mask.bool()
        advantages, entropy, logprobs, old_logprobs = map(fp32_detached, (advantages, entropy, logprobs, old_logprobs))
        return self.shape(advantages=torch.where(mask, advantages, 0.0), mask=mask, entropy=entropy, logprobs=logprobs,
                          old_logprobs=old_logprobs, generator=generator)


def share_of(selected: Tensor, mask: Tensor) -> float:
    return float(selected.sum()) / max(int(mask.sum()), 1)


def token_covariance(*, advantages: Tensor, logprobs: Tensor, mask: Tensor) -> Tensor:
    """Per-token centred product (A - mean A)(log pi - mean log pi), means over the valid tokens. (N, L), 0 on padding.

    Its mean is the covariance that drives the entropy change of a policy-gradient step (arXiv 2505.22617, eq. 3):
    high-covariance tokens (confident and rewarded, or unlikely and punished) are the ones that collapse entropy.
    """
    a_mean, lp_mean = masked_mean(advantages, mask), masked_mean(logprobs, mask)
    return torch.where(mask, (advantages - a_mean) * (logprobs - lp_mean), 0.0)
