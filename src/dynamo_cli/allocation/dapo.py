"""allocator=dapo: DAPO's dynamic sampling (Yu et al. 2025, arXiv 2503.14476, Sec. 3.2). A group whose rewards are
all equal has zero advantage, so it is dropped and fresh prompts are generated until the step has P informative groups
(P = trainer.prompts_per_step), for at most `max_rounds` rounds.

A protocols.RoundAllocator: it uses the collect stage's rounds (stages/collect.py), which draws its fresh prompts from
the sampler and keeps the dropped groups' rows out of the loss (every rollout still counts in rollout/total_rollouts).
Hand-worked tests in tests/test_rollout_allocators.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from dynamo_cli.allocation.base import ALLOCATORS, Allocation, AllocatorConfig
from dynamo_cli.allocation.uniform import UniformAllocator
from dynamo_cli.config.base import one_of, positive
from dynamo_cli.errors import DynamoError


@dataclass
class DapoAllocatorConfig(AllocatorConfig):
    """DAPO's dynamic sampling (arXiv 2503.14476): groups whose rewards are all equal are dropped and fresh prompts
    from the sampler are generated in further rounds until the step has trainer.prompts_per_step informative groups
    (the rounds of stages/collect.py). Every rollout generated counts in the budget (rollout/total_rollouts)."""

    name: str = "dapo"
    max_rounds: int = 10  # most generation rounds per step (verl's DAPO recipe: max_num_gen_batches=10)
    # when max_rounds end short of P informative groups: train (on the informative groups found: fewer than P, logged
    # as alloc/kept_groups) | stop (the run ends in one line, as verl's recipe raises). docs/algorithm.md "Our choices"
    on_max_rounds: str = "train"

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("allocator.max_rounds", self.max_rounds)
        one_of("allocator.on_max_rounds", self.on_max_rounds, ("train", "stop"))


# ----------------------------------------------------------------------------------------------------
# pure functions


def informative_groups(*, rewards: Tensor, group_index: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Which groups carry a gradient: at least two rollouts whose rewards are not all equal. rewards (B,),
    group_index (B,) in [0, num_groups). Returns (informative (P,) bool, generated (P,) bool: has any rollout)."""
    r = rewards.double()
    sizes = torch.bincount(group_index, minlength=num_groups)  # (P,)
    hi = torch.full((num_groups,), -math.inf, dtype=torch.float64).scatter_reduce(0, group_index, r, "amax")
    lo = torch.full((num_groups,), math.inf, dtype=torch.float64).scatter_reduce(0, group_index, r, "amin")
    return (sizes >= 2) & (hi > lo), sizes > 0


def keep_first(informative: Tensor, *, target: int) -> Tensor:
    """The first `target` informative groups, in draw order (DAPO truncates the filled batch to its size). (P,) bool."""
    return informative & (informative.long().cumsum(0) <= target)


def fresh_prompts_needed(*, informative: int, generated: int, target: int) -> int:
    """Fresh prompts for the next round: enough, at the informative rate seen so far this step, to fill the
    missing target - informative groups, at most `target` (one first round's worth); `target` when no group was
    informative yet. 0 when the batch is full."""
    short = target - informative
    if short <= 0:
        return 0
    if informative == 0:
        return target
    return min(target, math.ceil(short * generated / informative))


# ----------------------------------------------------------------------------------------------------
# the allocator


@ALLOCATORS.register("dapo", schema=DapoAllocatorConfig)
class DapoAllocator(UniformAllocator):
    """n rollouts per prompt; after each round, the informative groups so far are counted and fresh prompts asked
    for (`fresh_prompts_needed`) until P of them exist or `max_rounds` rounds ran; the round that ends keeps the
    first P informative groups (fewer if the rounds ran out) and drops the rest."""

    def __init__(self, *, n: int, max_rounds: int, on_max_rounds: str, explore_min_attempts: int, decay: float):
        super().__init__(n=n, explore_min_attempts=explore_min_attempts, decay=decay)
        self.max_rounds, self.on_max_rounds = max_rounds, on_max_rounds
        self._target = 0  # P: the first round's prompts; set at each step's first next_round

    def next_round(self, prompt_ids: list[str], *, rewards: Tensor, group_index: Tensor, round: int) -> Optional[Allocation]:
        num = len(prompt_ids)
        if round == 1:
            self._target = num
        informative, generated = informative_groups(rewards=rewards, group_index=group_index, num_groups=num)
        found, nothing = int(informative.sum()), torch.zeros(num, dtype=torch.long)
        if found >= self._target or round >= self.max_rounds:
            if found < self._target and self.on_max_rounds == "stop":
                raise DynamoError(f"allocator={type(self).__name__}: {found} of {self._target} groups informative after "
                                  f"allocator.max_rounds={self.max_rounds} rounds (the prompts are all solved or all failed); "
                                  f"raise max_rounds, or allocator.on_max_rounds=train trains on the {found} found")
            keep = keep_first(informative, target=self._target)
            return Allocation(counts=nothing, priority=torch.ones(num), keep=keep, metrics={
                "alloc/informative_groups": float(found),
                "alloc/kept_groups": float(keep.sum()),
                "alloc/dropped_groups": float((generated & ~keep).sum()),
                "alloc/fresh_prompts": float(num - self._target),
                "alloc/spent_rollouts": float(len(rewards)),
            })
        fresh = fresh_prompts_needed(informative=found, generated=int(generated.sum()), target=self._target)
        return Allocation(counts=nothing, priority=torch.ones(num), fresh=fresh)
