"""estimate: rewards (and, for a critic, values) -> per-token advantages (N, L) of this process's rows.

Group-relative estimators (advantages.py) normalise each sequence's reward within its prompt's group, which
spans processes, so they read the step's global rewards and keep this process's rows. The sequence advantage
is put on every policy token (loss_mask); a value-based estimator (GAE) would fill (N, L) from `batch.values`.
"""
from __future__ import annotations

from torch import Tensor

from dynamo_cli.trajectory import Trajectories


class GroupEstimator:
    """A group-relative estimator (GRPO, Dr. GRPO, RLOO): one advantage per sequence, broadcast over its tokens."""

    def __init__(self, advantages_fn):
        self.advantages_fn = advantages_fn  # (rewards (B,), group_index (B,), num_groups) -> (advantages (B,), zero_signal (B,))

    def __call__(self, batch: Trajectories, *, rewards: Tensor, group_index: Tensor, num_groups: int,
                 rows: slice) -> tuple[Tensor, Tensor, Tensor]:
        sequence, zero_signal = self.advantages_fn(rewards=rewards, group_index=group_index, num_groups=num_groups)  # (B,)
        tokens = sequence[rows][:, None] * batch.loss_mask  # (N, L): the sequence advantage on every policy token
        return tokens, sequence, zero_signal
