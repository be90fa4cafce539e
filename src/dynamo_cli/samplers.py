"""Samplers: which training problems a step draws (the `sampler` config group; protocols.Sampler).

uniform: consecutive slices of per-epoch permutations, a pure function of (step, seed), so a resume needs no
data-loader state. A curriculum sampler would keep per-prompt statistics (state_dict) and re-weight in `update`.
"""
from __future__ import annotations

import torch
from torch import Tensor


def step_prompt_indices(step: int, *, num_problems: int, per_step: int, seed: int) -> list[int]:
    """The training problems of `step` (1-based): consecutive slices of per-epoch permutations."""
    first = (step - 1) * per_step
    permutations: dict[int, torch.Tensor] = {}
    indices = []
    for position in range(first, first + per_step):
        epoch, offset = divmod(position, num_problems)
        if epoch not in permutations:
            permutations[epoch] = torch.randperm(num_problems, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        indices.append(int(permutations[epoch][offset]))
    return indices


class UniformSampler:
    """Every problem once per epoch, in an order fixed by the run's seed."""

    def __init__(self, *, seed: int):
        self.seed = seed

    def prompt_indices(self, step: int, *, num_problems: int, per_step: int) -> list[int]:
        return step_prompt_indices(step, num_problems=num_problems, per_step=per_step, seed=self.seed)

    def update(self, prompt_ids: list[str], *, rewards: Tensor, group_index: Tensor) -> None:
        """Nothing to learn: the order is fixed."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Stateless."""
