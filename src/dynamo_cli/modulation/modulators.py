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

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from dynamo_cli.algo.advantages import masked_mean


@dataclass
class TokenShaping:
    advantages: Tensor  # (N, L) modulated advantages, 0 on padding
    loss_mask: Tensor  # (N, L) bool, tokens that enter the loss
    metrics: dict[str, float] = field(default_factory=dict)  # mod/...
    distributions: dict[str, Tensor] = field(default_factory=dict)  # 1-D valid-token values, for histograms
    extra_terms: list = field(default_factory=list)  # loss terms (terms.Weighted) this mini-batch adds, e.g. KL-Cov
    extra_mask: Tensor | None = None  # (N, L) bool: the tokens an extra term acts on (Trajectories.extra_mask)


def _fp32(t: Tensor | None) -> Tensor | None:
    """Detached, at least float32 (bf16 entropies would quantise the min/max normalisations)."""
    return None if t is None else t.detach().to(torch.promote_types(t.dtype, torch.float32))


ScopeSync = Callable[[Tensor, str], Tensor]


def _scope_reduce(values: Tensor, mask: Tensor, scope_index: Tensor, reduce: str, sync: ScopeSync | None = None) -> Tensor:
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


def compensation_factor(
    *, advantages: Tensor, entropy: Tensor, mask: Tensor, scope_index: Tensor, mu_max: float, scope_sync: ScopeSync | None = None
) -> Tensor:
    """beta_comp = 1 + (mu_max - 1) (H_max - H) / (H_max - H_min) on A > 0 tokens, else 1. Returns (N, L).

    Low-entropy (confident) correct tokens get the largest boost: their softmax gradient is smallest.
    If H_max == H_min in a scope there is no relative confidence to use; the factor is 1 there.
    """
    h_max = _scope_reduce(entropy, mask, scope_index, "amax", scope_sync)  # (N, 1)
    h_min = _scope_reduce(entropy, mask, scope_index, "amin", scope_sync)  # (N, 1)
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
    peak = _scope_reduce(size, mask, scope_index, "amax", scope_sync)  # (N, 1)
    x = torch.where(mask & (peak > 0), size / torch.where(peak > 0, peak, 1.0), 0.0)
    beta = lambda_min + (1 - lambda_min) * torch.sigmoid(-gamma * (x - tau))  # 1/(1+e^z) = sigmoid(-z)
    return torch.where(mask, beta, torch.ones_like(beta))


class NoModulator:
    """Identity: advantages as given (0 on padding), every valid token in the loss."""

    needs_policy_stats = False

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
        return TokenShaping(advantages=torch.where(mask, advantages, 0.0).detach(), loss_mask=mask)


class DynamoModulator:
    """DynaMO: A * beta_comp * beta_stab (algorithm.md). The values, their defaults ("decay6") and their checks
    live in the schema (config.DynamoModulatorConfig; eps from AlgorithmConfig), built by builders.py.

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
        advantages, entropy, logprobs, old_logprobs = map(_fp32, (advantages, entropy, logprobs, old_logprobs))
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


# ------------------------------------------------------------------ the paper's token-level baselines
# Each is a modulator: it sees a mini-batch's (N, L) advantages, valid-token mask and the current policy's
# entropies / log-probs, once before its micro-batches, and returns TokenShaping. A token dropped from the loss
# mask passes no gradient through any term; the mini-batch's token count (the token-mean denominator) is taken
# before shaping, so dropping a token does not reweight the others. Selection is over this process's valid tokens.


def top_fraction_mask(*, values: Tensor, mask: Tensor, fraction: float) -> Tensor:
    """Valid tokens whose value is at or above the (1 - fraction) quantile of the valid values. (N, L) bool.

    Fork Tokens (arXiv 2506.01939) keep the top 20% highest-entropy tokens. torch.quantile interpolates
    linearly, so ties at the threshold are all kept. No valid token: nothing selected.
    """
    valid = values[mask]  # (M,)
    if valid.numel() == 0:
        return torch.zeros_like(mask)
    threshold = torch.quantile(valid, 1 - fraction)
    return mask & (values >= threshold)


def entropy_advantage(*, advantages: Tensor, entropy: Tensor, mask: Tensor, alpha: float, kappa: float) -> Tensor:
    """A + min(alpha H, |A| / kappa) on valid tokens, 0 on padding (arXiv 2506.14758). (N, L).

    The entropy term is detached (a bonus on the advantage, not an entropy gradient) and capped at |A| / kappa, so
    it never flips the advantage's sign and vanishes where A = 0.
    """
    bonus = torch.minimum(alpha * entropy, advantages.abs() / kappa)  # (N, L), >= 0
    return torch.where(mask, advantages + bonus, 0.0)


def token_covariance(*, advantages: Tensor, logprobs: Tensor, mask: Tensor) -> Tensor:
    """Per-token centred product (A - mean A)(log pi - mean log pi), means over the valid tokens. (N, L), 0 on padding.

    Its mean is the covariance that drives the entropy change of a policy-gradient step (arXiv 2505.22617, eq. 3):
    high-covariance tokens (confident and rewarded, or unlikely and punished) are the ones that collapse entropy.
    """
    a_mean, lp_mean = masked_mean(advantages, mask), masked_mean(logprobs, mask)
    return torch.where(mask, (advantages - a_mean) * (logprobs - lp_mean), 0.0)


def clip_cov_select(*, covariance: Tensor, candidates: Tensor, fraction: float, low: float, high: float,
                    num_valid: int, generator: torch.Generator) -> Tensor:
    """Clip-Cov (arXiv 2505.22617): max(1, int(fraction * num_valid)) tokens drawn uniformly at random among the
    candidates whose covariance lies in (low, high). (N, L) bool; fewer if the band holds fewer."""
    band = candidates & (covariance > low) & (covariance < high)  # (N, L)
    where = band.flatten().nonzero().squeeze(1)  # (K,) flat indices, row-major
    take = min(max(1, int(fraction * num_valid)), where.numel())
    chosen = where[torch.randperm(where.numel(), generator=generator)[:take].to(where.device)]
    return torch.zeros_like(band).flatten().index_fill_(0, chosen, True).view_as(band)


def kl_cov_select(*, covariance: Tensor, mask: Tensor, fraction: float) -> Tensor:
    """KL-Cov (arXiv 2505.22617): the max(1, int(fraction * M)) valid tokens of highest covariance, M valid tokens.
    (N, L) bool; nothing when there is no valid token."""
    num_valid = int(mask.sum())
    if num_valid == 0:
        return torch.zeros_like(mask)
    k = max(1, int(fraction * num_valid))
    scores = torch.where(mask, covariance, -torch.inf).flatten()
    return torch.zeros_like(mask).flatten().index_fill_(0, scores.topk(k).indices, True).view_as(mask)


class _TokenBaseline:
    """The shared call signature; subclasses implement `shape(advantages, mask, entropy, logprobs, old_logprobs, generator)`."""

    needs_policy_stats = True  # they read the current policy's entropy or log-probs

    @torch.no_grad()
    def __call__(self, *, advantages: Tensor, mask: Tensor, entropy: Tensor | None = None, logprobs: Tensor | None = None,
                 old_logprobs: Tensor | None = None, scope_index: Tensor | None = None, scope_sync: ScopeSync | None = None,
                 generator: torch.Generator | None = None) -> TokenShaping:
        mask = mask.bool()
        advantages, entropy, logprobs, old_logprobs = map(_fp32, (advantages, entropy, logprobs, old_logprobs))
        return self.shape(advantages=torch.where(mask, advantages, 0.0), mask=mask, entropy=entropy, logprobs=logprobs,
                          old_logprobs=old_logprobs, generator=generator)


def _share(selected: Tensor, mask: Tensor) -> float:
    return float(selected.sum()) / max(int(mask.sum()), 1)


class ForkTokensModulator(_TokenBaseline):
    """Fork Tokens (arXiv 2506.01939): the policy gradient only on the top `top_fraction` highest-entropy tokens."""

    def __init__(self, *, top_fraction: float):
        self.top_fraction = top_fraction

    def shape(self, *, advantages, mask, entropy, logprobs, old_logprobs, generator) -> TokenShaping:
        keep = top_fraction_mask(values=entropy, mask=mask, fraction=self.top_fraction)
        return TokenShaping(advantages=torch.where(keep, advantages, 0.0), loss_mask=keep,
                            metrics={"mod/kept_frac": _share(keep, mask)}, distributions={"kept_entropy": entropy[keep]})


class EntropyAdvantageModulator(_TokenBaseline):
    """Entropy Advantages (arXiv 2506.14758): A + min(alpha H, |A| / kappa), H the current policy's entropy."""

    def __init__(self, *, alpha: float, kappa: float):
        self.alpha, self.kappa = alpha, kappa

    def shape(self, *, advantages, mask, entropy, logprobs, old_logprobs, generator) -> TokenShaping:
        shaped = entropy_advantage(advantages=advantages, entropy=entropy, mask=mask, alpha=self.alpha, kappa=self.kappa)
        bonus = shaped - advantages  # 0 on padding
        return TokenShaping(advantages=shaped, loss_mask=mask, metrics={
            "mod/entropy_bonus_mean": float(masked_mean(bonus, mask)),
            "mod/entropy_bonus_capped_frac": _share(mask & (self.alpha * entropy > advantages.abs() / self.kappa), mask)})


class ClipCovModulator(_TokenBaseline):
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
                            metrics={"mod/detached_frac": _share(detached, mask), "mod/cov_mean": float(masked_mean(covariance, mask))},
                            distributions={"covariance": covariance[mask]})


class KLCovModulator(_TokenBaseline):
    """KL-Cov (arXiv 2505.22617): the top `fraction` highest-covariance tokens get the extra term `penalty`
    (terms.CovarianceKL, coef * |log pi - log pi_old|) for this mini-batch."""

    def __init__(self, *, fraction: float, penalty):
        self.fraction, self.penalty = fraction, penalty  # penalty: terms.Weighted, built by builders.py

    def shape(self, *, advantages, mask, entropy, logprobs, old_logprobs, generator) -> TokenShaping:
        covariance = token_covariance(advantages=advantages, logprobs=logprobs, mask=mask)
        selected = kl_cov_select(covariance=covariance, mask=mask, fraction=self.fraction)
        return TokenShaping(advantages=advantages, loss_mask=mask, extra_terms=[self.penalty], extra_mask=selected,
                            metrics={"mod/penalised_frac": _share(selected, mask), "mod/cov_mean": float(masked_mean(covariance, mask))},
                            distributions={"covariance": covariance[mask]})
