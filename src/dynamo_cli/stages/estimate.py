"""estimate: rewards (and, for a critic, values) -> per-token advantages (N, L) of this process's rows.

Group-relative estimators (algo/advantages.py) normalise each sequence's reward within its prompt's group, which
spans processes, so they read the step's global rewards and keep this process's rows. The sequence advantage
is put on every policy token (loss_mask). The value-based estimator (GAE, algo/gae.py) fills (N, L) from the
critic's `batch.values` and also returns the critic's targets.

Every estimator returns (advantages (N, L), returns (N, L) or None, sequence advantages (B,) for logs,
zero_signal (B,) bool).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from dynamo_cli.algo.gae import gae_advantages, masked_whiten, token_rewards
from dynamo_cli.rollout.trajectory import Trajectories


class GroupEstimator:
    """A group-relative estimator (GRPO, Dr. GRPO, RLOO): one advantage per sequence, broadcast over its tokens."""

    def __init__(self, advantages_fn):
        self.advantages_fn = advantages_fn  # (rewards (B,), group_index (B,), num_groups) -> (advantages (B,), zero_signal (B,))

    def __call__(self, batch: Trajectories, *, rewards: Tensor, group_index: Tensor, num_groups: int,
                 rows: slice) -> tuple[Tensor, None, Tensor, Tensor]:
        sequence, zero_signal = self.advantages_fn(rewards=rewards, group_index=group_index, num_groups=num_groups)  # (B,)
        tokens = sequence[rows][:, None] * batch.loss_mask  # (N, L): the sequence advantage on every policy token
        return tokens, None, sequence, zero_signal


class GAEEstimator:
    """PPO's GAE(γ, λ) on the critic's V_old, the verifiable reward at each sequence's last policy token (and, with
    kl_coef > 0, −β·(log π_old − log π_ref) on every token), advantages whitened over the step's policy tokens (as
    verl). Returns are not whitened: they are the critic's targets. The logged sequence advantage is that of the
    first policy token. `total` / `gather_rows` reduce over processes (identity for one process)."""

    def __init__(self, *, gamma: float, lam: float, kl_coef: float, total: Callable[[float], float] = float,
                 gather_rows: Callable[[Tensor], Tensor] = lambda t: t):
        self.gamma, self.lam, self.kl_coef, self.total, self.gather_rows = gamma, lam, kl_coef, total, gather_rows

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
