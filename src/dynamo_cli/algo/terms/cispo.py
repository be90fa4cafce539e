"""algorithm.policy_loss=cispo: Clipped IS-weight Policy Optimization (MiniMax-M1, arXiv 2506.13585, Sec. 3.1).

PPO clips the token *update*: a token whose ratio left [1 − ε_low, 1 + ε_high] passes no gradient at all, and the
rare, low-probability tokens that reflection hangs on are the first to leave. CISPO clips the importance *weight*
instead and keeps every token's gradient, a REINFORCE-style term weighted by the clipped, stop-gradient ratio:

    loss_i,t = −sg[ clip(r_i,t, 1 − ε_low, 1 + ε_high) ] · A_i,t · log π(y_i,t)        r = π / π_old

The paper puts no lower bound on the weight (ε_low^IS "large") and tunes only ε_high^IS; here ε_low and ε_high
are algorithm.eps_low / eps_high, and conf/experiment/cispo.yaml sets ε_low = 1 (a lower clip at 0: none, since
r > 0). The log-ratio is clamped to [−20, 20] before exp, as everywhere else.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dynamo_cli.algo.terms.base import POLICY_LOSSES, policy_tokens
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories


def cispo_loss(*, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, eps_low: float,
               eps_high: float) -> tuple[Tensor, Tensor]:
    """CISPO's per-token loss −sg[clip(r)] A log π (arXiv 2506.13585, eq. 4). logprobs (N, L) differentiable;
    old_logprobs, advantages (N, L); mask (N, L) bool. Returns (per_token_loss (N, L), 0 off the mask; clipped (N, L)
    bool: valid tokens whose weight was clipped; they still pass a gradient, scaled by the clipped weight)."""
    ratio = torch.exp((logprobs.detach() - old_logprobs).clamp(-20.0, 20.0))  # (N, L), no gradient through the weight
    weight = ratio.clamp(1 - eps_low, 1 + eps_high)
    mask = mask.bool()
    return torch.where(mask, -weight * advantages * logprobs, 0.0), mask & (weight != ratio)


class CISPO:
    """policy_loss=cispo: REINFORCE on log π weighted by the clipped, stop-gradient ratio (algorithm.eps_low / eps_high).
    Logged: train/pg_loss, clip_frac (share of tokens whose weight was clipped: they still learn), approx_kl.
    train/pg_loss is −Σ w A log π, not PPO's −Σ r A: its value is on another scale, its gradient is the comparable part."""

    name, needs = "pg_loss", frozenset()

    def __init__(self, *, eps_low: float, eps_high: float):
        self.eps_low, self.eps_high = eps_low, eps_high

    def __call__(self, batch: Trajectories, out: ModelOutputs) -> tuple[Tensor, dict[str, Tensor]]:
        per_token, clipped = cispo_loss(logprobs=out.logprobs, old_logprobs=batch.old_logprobs, advantages=batch.advantages,
                                        mask=policy_tokens(batch), eps_low=self.eps_low, eps_high=self.eps_high)
        return per_token, {"clip_frac": clipped.float(), "approx_kl": batch.old_logprobs - out.logprobs.detach()}


@POLICY_LOSSES.register("cispo")
def cispo(*, algorithm) -> CISPO:
    return CISPO(eps_low=algorithm.eps_low, eps_high=algorithm.eps_high)
