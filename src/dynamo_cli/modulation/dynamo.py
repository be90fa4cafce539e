"""Token-level advantage modulation (DynaMO Part 2, arXiv 2602.19208; docs/algorithm.md "Part 2").

    A_final[i, t] = A[i, t] * beta_comp[i, t] * beta_stab[i, t]        (factors detached: no gradient)

All tensors are (N, L): N sequences, L response positions, `mask` (bool) true on valid (non-padding) tokens.
`scope_index` (N,) long puts each sequence in a normalisation scope: H_min, H_max and max |dH| are taken over
the valid tokens of the sequence's scope -- zeros(N) = the whole batch passed in, arange(N) = per sequence,
micro-batch ids = per micro-batch (the reference). Padding never enters a min, max or mean.
`scope_sync`, when a scope spans several processes (data parallelism), combines each scope's extremum
across them: `scope_sync(per_scope_values, "amax" | "amin")` returns the element-wise max/min over processes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dynamo_cli.algo.masked import masked_mean
from dynamo_cli.config.base import check, positive
from dynamo_cli.modulation.base import MODULATORS, ModulatorConfig, ScopeSync, TokenShaping, fp32_detached, scope_reduce


@dataclass
class DynamoModulatorConfig(ModulatorConfig):
    """DynaMO's token-level modulation (docs/algorithm.md, Part 2)."""

    name: str = "dynamo"
    compensate: bool = True  # boost low-entropy tokens of positive-advantage responses (β_comp)
    stabilise: bool = True  # damp the tokens with the largest estimated entropy change (β_stab)
    mu_max: float = 1.2  # largest compensation factor
    lambda_min: float = 0.6  # smallest stabilisation factor
    gamma: float = 50.0  # steepness of the stabilisation sigmoid
    tau: float = 0.99  # sigmoid midpoint on the normalised |ΔH|

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.mu_max >= 1, f"modulator.mu_max={self.mu_max} must be >= 1")
        check(0 <= self.lambda_min <= 1, f"modulator.lambda_min={self.lambda_min} must be in [0, 1]")
        positive("modulator.gamma", self.gamma)


def compensation_factor(
    *, advantages: Tensor, entropy: Tensor, mask: Tensor, scope_index: Tensor, mu_max: float, scope_sync: ScopeSync | None = None
) -> Tensor:
    """beta_comp = 1 + (mu_max - 1) (H_max - H) / (H_max - H_min) on A > 0 tokens, else 1. Returns (N, L).

    Low-entropy (confident) correct tokens get the largest boost: their softmax gradient is smallest.
    If H_max == H_min in a scope there is no relative confidence to use; the factor is 1 there.
    """
    h_max = scope_reduce(entropy, mask, scope_index, "amax", scope_sync)  # (N, 1)
    h_min = scope_reduce(entropy, mask, scope_index, "amin", scope_sync)  # (N, 1)
    spread = h_max - h_min
    ok = mask & (spread > 0)  # (N, L); a scope without valid tokens has spread -inf
    rel = torch.where(ok, (h_max - entropy) / torch.where(spread > 0, spread, 1.0), 0.0)  # (N, L) in [0, 1]
    return torch.where(mask & (advantages > 0), 1 + (mu_max - 1) * rel, torch.ones_like(rel))


def entropy_change(
    *,
    advantages: Tensor,
    logprobs: Tensor,
    old_logprobs: Tensor,
    entropy: Tensor,
    mask: Tensor,
    eps_low: float,
    eps_high: float,
) -> Tensor:
    """First-order entropy change of this token's update: dH = -xi (pi Lambda - E_seq[pi Lambda]). (N, L).

    Lambda = log pi + H, xi = I_clip r A, r = exp(log pi - log pi_old), I_clip = 1 where PPO-clip still
    passes a gradient: (A > 0 and r <= 1 + eps_high) or (A < 0 and r >= 1 - eps_low). E_seq is the mean over
    the valid tokens of the same sequence. 0 on padding.
    """
    logprobs = torch.where(mask, logprobs, 0.0)  # padding may hold garbage; keep exp() finite
    ratio = torch.exp((logprobs - torch.where(mask, old_logprobs, 0.0)).clamp(-20.0, 20.0))  # (N, L) as the loss
    live = ((advantages > 0) & (ratio <= 1 + eps_high)) | ((advantages < 0) & (ratio >= 1 - eps_low))
    xi = live * ratio * advantages  # (N, L)
    pi_lambda = logprobs.exp() * (logprobs + entropy)  # (N, L)
    centred = pi_lambda - masked_mean(pi_lambda, mask, dim=1).unsqueeze(1)
    return torch.where(mask, -xi * centred, 0.0)


def stabilisation_factor(
    *, delta_h: Tensor, mask: Tensor, scope_index: Tensor, lambda_min: float, gamma: float, tau: float,
    scope_sync: ScopeSync | None = None,
) -> Tensor:
    """beta_stab = lambda_min + (1 - lambda_min) / (1 + exp(gamma (x - tau))), x = |dH| / max|dH|. (N, L).

    Damps only the tokens whose update would move entropy most (x near 1). max|dH| is over the valid tokens
    of the scope; where it is 0 (no token moves entropy) x = 0, i.e. beta ~ 1. 1 on padding.
    """
    size = torch.where(mask, delta_h.abs(), 0.0)  # (N, L)
    peak = scope_reduce(size, mask, scope_index, "amax", scope_sync)  # (N, 1)
    x = torch.where(mask & (peak > 0), size / torch.where(peak > 0, peak, 1.0), 0.0)
    beta = lambda_min + (1 - lambda_min) * torch.sigmoid(-gamma * (x - tau))  # 1/(1+e^z) = sigmoid(-z)
    return torch.where(mask, beta, torch.ones_like(beta))


@MODULATORS.register("dynamo", schema=DynamoModulatorConfig)
class DynamoModulator:
    """DynaMO: A * beta_comp * beta_stab (docs/algorithm.md). The values, their defaults ("decay6") and their checks
    live in DynamoModulatorConfig above (ε_low / ε_high: algorithm.eps_low / eps_high, the run's clip range).

    `compensate` / `stabilise` switch each factor off (factor 1) for ablations. `advantages` is token-level
    (N, L): the sequence advantage broadcast over its tokens. entropy / logprobs come from the *current*
    policy at each position, old_logprobs from the policy that generated the rollouts.
    """

    def __init__(self, *, compensate: bool, stabilise: bool, mu_max: float, lambda_min: float, gamma: float, tau: float,
                 eps_low: float, eps_high: float):
        self.compensate, self.stabilise = compensate, stabilise
        self.mu_max, self.lambda_min, self.gamma, self.tau = mu_max, lambda_min, gamma, tau
        self.eps_low, self.eps_high = eps_low, eps_high
        self.needs_policy_stats = compensate or stabilise  # entropy / logprobs of the current policy

    @torch.no_grad()
    def __call__(
        self,
        *,
        advantages: Tensor,
        mask: Tensor,
        entropy: Tensor | None = None,
        logprobs: Tensor | None = None,
        old_logprobs: Tensor | None = None,
        scope_index: Tensor | None = None,
        scope_sync: ScopeSync | None = None,
        generator: torch.Generator | None = None,
    ) -> TokenShaping:
        mask = mask.bool()
        advantages, entropy, logprobs, old_logprobs = map(fp32_detached, (advantages, entropy, logprobs, old_logprobs))
        missing_logprobs = logprobs is None or old_logprobs is None
        if (self.needs_policy_stats and entropy is None) or (self.stabilise and missing_logprobs):
            raise ValueError("DynamoModulator needs entropy (and, to stabilise, logprobs and old_logprobs)")
        if scope_index is None:
            scope_index = torch.zeros(advantages.shape[0], dtype=torch.long, device=advantages.device)
        ones = torch.ones_like(advantages)
        beta_comp, beta_stab, delta_h = ones, ones, torch.zeros_like(advantages)
        if self.compensate:
            beta_comp = compensation_factor(
                advantages=advantages, entropy=entropy, mask=mask, scope_index=scope_index, mu_max=self.mu_max,
                scope_sync=scope_sync,
            )
        if self.stabilise:
            delta_h = entropy_change(
                advantages=advantages, logprobs=logprobs, old_logprobs=old_logprobs,
                entropy=entropy, mask=mask, eps_low=self.eps_low, eps_high=self.eps_high,
            )
            beta_stab = stabilisation_factor(
                delta_h=delta_h, mask=mask, scope_index=scope_index, lambda_min=self.lambda_min,
                gamma=self.gamma, tau=self.tau, scope_sync=scope_sync,
            )
        final = torch.where(mask, advantages * beta_comp * beta_stab, 0.0)  # (N, L)

        positive = mask & (advantages > 0)
        abs_dh = delta_h.abs()  # 0 on padding
        metrics = {  # factors are 1 and |dH| is 0 on padding, so plain min / max are over valid tokens
            "mod/beta_comp_mean": masked_mean(beta_comp, mask),
            "mod/beta_comp_pos_mean": torch.where(positive.any(), masked_mean(beta_comp, positive), 1.0),
            "mod/beta_stab_mean": masked_mean(beta_stab, mask),
            "mod/beta_stab_min": beta_stab.min(),
            "mod/abs_delta_h_max": abs_dh.max(),
            "mod/abs_delta_h_mean": masked_mean(abs_dh, mask),
            "mod/boosted_frac": masked_mean((beta_comp > 1).float(), mask),
            "mod/damped_frac": masked_mean((beta_stab < 0.99).float(), mask),
        }
        metrics = dict(zip(metrics, torch.stack(list(metrics.values())).tolist(), strict=True))  # one device sync
        return TokenShaping(
            advantages=final, loss_mask=mask, metrics=metrics,
            distributions={"beta_comp": beta_comp[mask], "beta_stab": beta_stab[mask], "abs_delta_h": abs_dh[mask]},
        )
