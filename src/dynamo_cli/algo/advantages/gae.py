"""Generalised advantage estimation over completion tokens (Schulman et al. 2016, arXiv 1506.02438), for PPO with a
learned critic (`algorithm.advantage=gae`, `critic=separate`).

    r_t     = -β (log π_old − log π_ref)_t  [+ the verifiable reward R at the sequence's last policy token]
    δ_t     = r_t + γ V_{t+1} − V_t            (V after the last policy token is 0: the episode has ended)
    A_t     = δ_t + γ λ A_{t+1}                 returns G_t = A_t + V_t (the critic's regression target)

Shapes: N rows, L positions of the response region; `mask` (N, L) bool marks the policy tokens. Positions off the
mask are skipped (the next policy token's value and advantage pass through them), so a multi-turn trajectory with
environment tokens inside the response region is one episode over its policy tokens.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from dynamo_cli.algo.advantages.base import ESTIMATORS
from dynamo_cli.rollout.trajectory import Trajectories


def token_rewards(*, rewards: Tensor, mask: Tensor, kl: Optional[Tensor] = None, kl_coef: float = 0.0) -> Tensor:
    """(N, L): each sequence's reward (N,) at its last policy token, minus kl_coef · kl (N, L) on every policy token
    (the KL-in-reward penalty of InstructGPT-style PPO, Ouyang et al. 2022; kl = log π_old − log π_ref)."""
    mask = mask.bool()
    L = mask.shape[1]
    last = L - 1 - mask.flip(1).int().argmax(dim=1)  # (N,) column of the last True (argmax finds the first maximum)
    out = torch.zeros(mask.shape, dtype=torch.float32)
    out[torch.arange(len(rewards)), last] = rewards.float()
    out = out * mask.any(dim=1, keepdim=True)  # a row without policy tokens carries no reward
    if kl is not None and kl_coef != 0:
        out = out - kl_coef * kl.float()
    return torch.where(mask, out, 0.0)


def gae_advantages(*, rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """(advantages (N, L), returns (N, L)), both 0 off the mask. A reverse scan over L, vectorised over the rows.

    rewards (N, L) per-token rewards (`token_rewards`), values (N, L) V(s_t) of the critic before token t."""
    mask = mask.bool()
    rewards, values = rewards.float(), values.float()
    N, L = mask.shape
    next_value = torch.zeros(N)  # V of the next policy token (0 past the end)
    next_advantage = torch.zeros(N)
    advantages = torch.zeros(N, L)
    for t in reversed(range(L)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        next_value = torch.where(m, values[:, t], next_value)  # off the mask: carry the later token's through
        next_advantage = torch.where(m, advantage, next_advantage)
        advantages[:, t] = torch.where(m, advantage, 0.0)
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


def masked_whiten(values: Tensor, mask: Tensor, *, total: Callable[[float], float] = float) -> Tensor:
    """(values − mean) / sqrt(var + 1e-8) over the masked entries, 0 off the mask (verl's masked_whiten on GAE
    advantages, with Bessel's correction). `total` sums a float over the processes, so N processes whiten with the
    statistics of the whole step, as one process would."""
    mask = mask.bool()
    x = torch.where(mask, values.double(), 0.0)
    count, s, sq = total(float(mask.sum())), total(float(x.sum())), total(float(x.square().sum()))
    mean = s / max(count, 1.0)
    var = (sq / max(count, 1.0) - mean**2) * count / max(count - 1.0, 1.0)
    return torch.where(mask, (values.float() - mean) * (max(var, 0.0) + 1e-8) ** -0.5, 0.0)


@ESTIMATORS.register("gae")
class GAEEstimator:
    """PPO's GAE(γ, λ) on the critic's V_old, the verifiable reward at each sequence's last policy token (and, with
    kl_coef > 0, −β·(log π_old − log π_ref) on every token), advantages whitened over the step's policy tokens (as
    verl). Returns are not whitened: they are the critic's targets. The logged sequence advantage is that of the
    first policy token. `total` / `gather_rows` reduce over processes (identity for one process)."""

    def __init__(self, *, gamma: float, lam: float, kl_in_reward: float, total: Callable[[float], float] = float,
                 gather_rows: Callable[[Tensor], Tensor] = lambda t: t):
        self.gamma, self.lam, self.kl_coef, self.total, self.gather_rows = gamma, lam, kl_in_reward, total, gather_rows

    def __call__(self, batch: Trajectories, *, rewards: Tensor, group_index: Tensor, num_groups: int,
                 rows: slice) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mask = batch.loss_mask
        kl = batch.old_logprobs - batch.ref_logprobs if self.kl_coef > 0 else None  # k1, the sampled log-ratio
        per_token = token_rewards(rewards=rewards[rows], mask=mask, kl=kl, kl_coef=self.kl_coef)  # (N, L)
        advantages, returns = gae_advantages(rewards=per_token, values=batch.values, mask=mask, gamma=self.gamma, lam=self.lam)
        advantages = masked_whiten(advantages, mask, total=self.total)
        first = mask.int().argmax(dim=1)  # (N,) the first policy token
        sequence = self.gather_rows(advantages[torch.arange(len(mask)), first] * mask.any(dim=1))  # (B,)
        return advantages, returns, sequence, torch.zeros(len(rewards), dtype=torch.bool)  # a critic's baseline has no zero-signal groups
