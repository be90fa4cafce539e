"""What every sampler shares: the registry of the `sampler` group and the endless per-epoch permutation stream."""
from __future__ import annotations

import torch

from dynamo_cli.registry import Registry

SAMPLERS = Registry("sampler")


def permutation_stream(first: int, count: int, *, num_problems: int, seed: int) -> list[int]:
    """Positions [first, first + count) of an endless stream of per-epoch permutations of range(num_problems),
    epoch e shuffled by a generator seeded with seed * 100_003 + e."""
    permutations: dict[int, torch.Tensor] = {}
    indices = []
    for position in range(first, first + count):
        epoch, offset = divmod(position, num_problems)
        if epoch not in permutations:
            permutations[epoch] = torch.randperm(num_problems, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        indices.append(int(permutations[epoch][offset]))
    return indices


def step_prompt_indices(step: int, *, num_problems: int, per_step: int, seed: int) -> list[int]:
    """The training problems of `step` (1-based): consecutive slices of per-epoch permutations."""
    return permutation_stream((step - 1) * per_step, per_step, num_problems=num_problems, seed=seed)
