"""sampler=uniform: every training problem once per epoch, in an order fixed by the run's seed.

Consecutive slices of per-epoch permutations, a pure function of (step, seed, fresh prompts drawn before), so a resume
needs no data-loader state beyond that count. `more(step, count)`: fresh prompts for the same step (a round allocator
such as DAPO's dynamic sampling asks for them); they continue the stream, so no prompt repeats within a step while the
pool has unused prompts.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from dynamo_cli.config.base import GroupConfig
from dynamo_cli.sampling.base import SAMPLERS, permutation_stream


@dataclass
class UniformSamplerConfig(GroupConfig):
    """Every training problem once per epoch, in an order fixed by the run's seed (sampling/samplers.py)."""

    name: str = "uniform"


@SAMPLERS.register("uniform", schema=UniformSamplerConfig)
class UniformSampler:
    """Every problem once per epoch, in an order fixed by the run's seed. Fresh prompts (`more`) continue the
    stream, and every later step starts after them (`extra`: how many were drawn; the checkpointed state)."""

    def __init__(self, *, seed: int):
        self.seed = seed
        self.extra = 0  # fresh prompts drawn by `more` before the current position
        self._cursor = 0  # stream position of the next fresh prompt of the current step

    def prompt_indices(self, step: int, *, num_problems: int, per_step: int) -> list[int]:
        first = (step - 1) * per_step + self.extra
        self._cursor = first + per_step
        return permutation_stream(first, per_step, num_problems=num_problems, seed=self.seed)

    def more(self, step: int, *, num_problems: int, count: int) -> list[int]:
        indices = permutation_stream(self._cursor, count, num_problems=num_problems, seed=self.seed)
        self._cursor, self.extra = self._cursor + count, self.extra + count
        return indices

    def update(self, prompt_ids: list[str], *, rewards: Tensor, group_index: Tensor) -> None:
        """Nothing to learn: the order is fixed."""

    def state_dict(self) -> dict:
        return {"extra": self.extra}

    def load_state_dict(self, state: dict) -> None:
        self.extra = state.get("extra", 0)  # checkpoints from before fresh prompts hold {}
