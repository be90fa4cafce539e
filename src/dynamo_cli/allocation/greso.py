"""allocator=greso: GRESO (Zheng et al. 2025, arXiv 2506.02177), DAPO's dynamic sampling plus a filter *before*
rollout. A prompt whose last z visits all had zero reward variance is skipped with probability 1 - p^z, so it is
re-checked now and then (with probability p^z) rather than never again; p is p_easy or p_hard (last seen all solved /
all failed), each steered a step at a time towards a target zero-variance share.

A protocols.RoundAllocator like dapo (stages/collect.py runs the rounds). Hand-worked tests in
tests/test_rollout_allocators.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from dynamo_cli.allocation.base import ALLOCATORS, Allocation, count_metrics
from dynamo_cli.allocation.dapo import DapoAllocator, DapoAllocatorConfig
from dynamo_cli.config.base import check


@dataclass
class GresoAllocatorConfig(DapoAllocatorConfig):
    """GRESO (arXiv 2506.02177): DAPO's dynamic sampling plus a pre-rollout filter. A prompt whose last z visits
    all had zero reward variance is rolled out with probability p^z (a probabilistic re-check), p = p_easy if it was
    last seen all solved, p_hard if all failed; each p moves by `delta` a step towards its target share of
    zero-variance groups. Defaults as the paper's scripts (Infini-AI-Lab/GRESO: p 0.5, target 0.25, 0.01, [0.05, 0.95])."""

    name: str = "greso"
    p_easy: float = 0.5  # initial exploration probability of a prompt last seen all solved
    p_hard: float = 0.5  # ... of a prompt last seen all failed
    target_zero_variance: float = 0.25  # target share of zero-variance groups: a third all solved, two thirds all failed
    delta: float = 0.01  # the probabilities' step per RL step (0: fixed probabilities)
    p_min: float = 0.05  # the least either probability steps down to (a prompt is always re-checked now and then)
    p_max: float = 0.95  # the most either probability steps up to
    # the least probability a zero-variance prompt is rolled out with, however long its streak: the reference's
    # 1 - max(p^z, 0.01) skip probability (Infini-AI-Lab/GRESO, presampling_selector.py)
    explore_floor: float = 0.01
    seed: int = 0  # of the skip draws: the same on every process, replayed on resume

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.p_min <= self.p_max <= 1, f"allocator.p_min={self.p_min}, allocator.p_max={self.p_max} must satisfy 0 < p_min <= p_max <= 1")
        for key in ("p_easy", "p_hard"):
            value = getattr(self, key)
            check(self.p_min <= value <= self.p_max, f"allocator.{key}={value} must be in [p_min, p_max] = [{self.p_min}, {self.p_max}]")
        check(0 <= self.target_zero_variance <= 1, f"allocator.target_zero_variance={self.target_zero_variance} must be in [0, 1]")
        check(0 <= self.delta < 1, f"allocator.delta={self.delta} must be in [0, 1)")
        check(0 <= self.explore_floor <= 1, f"allocator.explore_floor={self.explore_floor} must be in [0, 1]")


# ----------------------------------------------------------------------------------------------------
# pure functions


def greso_skip(*, streak: Tensor, explore_prob: Tensor | float, uniform: Tensor, floor: float) -> Tensor:
    """GRESO's probabilistic pre-rollout filter: a prompt with `streak` = z zero-variance visits in a row (of one kind)
    is rolled out with probability max(p_e^z, floor) (z = 0: always) and skipped otherwise: the reference's skip
    probability 1 - max(p^z, 0.01), so a long streak still leaves a prompt a 1% chance to show it has changed.
    explore_prob: a float or (P,) per prompt (GRESO: p_easy for a prompt last seen all solved, p_hard for one last seen
    all failed). uniform (P,) in [0, 1). Returns skip (P,) bool."""
    keep = (torch.as_tensor(explore_prob, dtype=torch.float64) ** streak.double()).clamp(min=floor)
    return uniform >= torch.where(streak > 0, keep, 1.0)


def adapt_explore_prob(p: float, *, zero_share: float, target: float, delta: float, low: float, high: float) -> float:
    """GRESO's controller of one exploration probability: the step's share of zero-variance groups of its kind
    (all solved, or all failed) at or above `target` -> explore less (p - delta), below -> more (p + delta),
    kept in [low, high]. delta = 0: a fixed probability."""
    return max(p - delta, low) if zero_share >= target else min(p + delta, high)


def zero_variance_groups(*, rewards: Tensor, group_index: Tensor, num_groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each group's verdict from its rewards: (judged (P,): >= 2 rollouts; zero (P,): judged and every reward equal,
    whatever the reward's scale; solved (P,): zero and that reward > 0, i.e. "easy" for binary rewards, "hard" when it
    is 0). The same equality DAPO calls uninformative (dapo.informative_groups): not a count of rewards > 0, which
    calls a group of 0.3 and 0.7 partial credits all-solved. rewards (B,), group_index (B,) in [0, num_groups)."""
    r = rewards.double()
    sizes = torch.bincount(group_index, minlength=num_groups)
    hi = torch.full((num_groups,), -math.inf, dtype=torch.float64).scatter_reduce(0, group_index, r, "amax")
    lo = torch.full((num_groups,), math.inf, dtype=torch.float64).scatter_reduce(0, group_index, r, "amin")
    judged = sizes >= 2
    zero = judged & (hi == lo)
    return judged, zero, zero & (hi > 0)


def counted_zero_variance(*, successes: Tensor, attempts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`zero_variance_groups` from success counts alone (binary rewards): all k = G solved, k = 0 failed."""
    k, g = successes.double(), attempts.double()
    judged = g >= 2
    zero = judged & ((k == 0) | (k == g))
    return judged, zero, zero & (k == g)


def zero_variance_streak(*, streak: Tensor, solved_before: Tensor, judged: Tensor, zero: Tensor,
                         solved: Tensor) -> tuple[Tensor, Tensor]:
    """The trailing run of zero-variance visits *of one kind* after this step, as the reference counts it (easy: the
    visits all solved from the last backwards; hard: all failed): +1 where a judged group is zero-variance of the kind
    the run had, 1 where it is of the other kind (a new run), 0 where it was mixed; unchanged where the prompt was not
    judged (skipped, or < 2 rollouts: no new evidence). Returns (streak (P,) long, last kind (P,) bool: solved)."""
    same = (streak > 0) & (solved == solved_before)
    run = torch.where(zero, torch.where(same, streak + 1, torch.ones_like(streak)), torch.zeros_like(streak))
    return torch.where(judged, run, streak), torch.where(judged & zero, solved, solved_before)


# ----------------------------------------------------------------------------------------------------
# the allocator


@ALLOCATORS.register("greso", schema=GresoAllocatorConfig)
class GresoAllocator(DapoAllocator):
    """DapoAllocator whose `allocate` first skips prompts predicted to have zero variance (`greso_skip`), with GRESO's
    two exploration probabilities: p_easy for prompts last seen all solved, p_hard for those last seen all failed,
    each moved by `delta` a step towards its target share of zero-variance groups (`adapt_explore_prob`; targets
    target_zero_variance / 3 easy and 2/3 of it hard, as the paper's code), from the first step that revisits a
    prompt (the paper's code: from its second epoch). The skip draws come from a generator
    seeded by (seed, number of allocate calls); streaks, kinds, probabilities and draws are checkpointed."""

    def __init__(self, *, n: int, max_rounds: int, on_max_rounds: str, p_easy: float, p_hard: float, target_zero_variance: float,
                 delta: float, p_min: float, p_max: float, explore_floor: float, seed: int, explore_min_attempts: int, decay: float):
        super().__init__(n=n, max_rounds=max_rounds, on_max_rounds=on_max_rounds, explore_min_attempts=explore_min_attempts,
                         decay=decay)
        self.p_easy, self.p_hard, self.seed, self.explore_floor = p_easy, p_hard, seed, explore_floor
        self.target_easy, self.target_hard = target_zero_variance / 3, target_zero_variance * 2 / 3
        self.delta, self.p_min, self.p_max = delta, p_min, p_max
        self._streak: dict[str, int] = {}  # prompt id -> zero-variance visits in a row
        self._solved: dict[str, bool] = {}  # prompt id -> its last zero-variance visit was all solved (else all failed)
        self._calls = 0
        self._judged: tuple[list[str], tuple[Tensor, Tensor, Tensor]] | None = None  # the last round's verdicts, by rewards

    def allocate(self, prompt_ids: list[str], *, tags: list[str] | None = None) -> Allocation:
        allocation = super().allocate(prompt_ids, tags=tags)
        streak = torch.tensor([self._streak.get(pid, 0) for pid in prompt_ids], dtype=torch.long)
        explore = torch.tensor([self.p_easy if self._solved.get(pid, False) else self.p_hard for pid in prompt_ids], dtype=torch.float64)
        uniform = torch.rand(len(prompt_ids), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self._calls),
                             dtype=torch.float64)
        self._calls += 1
        skip = greso_skip(streak=streak, explore_prob=explore, uniform=uniform, floor=self.explore_floor)
        counts = torch.where(skip, torch.zeros_like(allocation.counts), allocation.counts)
        metrics = {**allocation.metrics, **count_metrics(counts), "alloc/skipped_prompts": float(skip.sum()),
                   "alloc/p_easy": self.p_easy, "alloc/p_hard": self.p_hard}
        return Allocation(counts=counts, priority=allocation.priority, metrics=metrics)

    def next_round(self, prompt_ids: list[str], *, rewards: Tensor, group_index: Tensor, round: int) -> Optional[Allocation]:
        allocation = super().next_round(prompt_ids, rewards=rewards, group_index=group_index, round=round)
        # every round so far: the last call's verdicts are the step's, which `update` then reads
        self._judged = (list(prompt_ids), zero_variance_groups(rewards=rewards, group_index=group_index, num_groups=len(prompt_ids)))
        if allocation is not None and allocation.keep is not None:  # the last round: how many the filter saved
            allocation.metrics["alloc/skipped_prompts"] = float(len(prompt_ids) - int(torch.bincount(group_index, minlength=len(prompt_ids)).gt(0).sum()))
        return allocation

    def update(self, prompt_ids: list[str], *, successes: Tensor, attempts: Tensor, tags: list[str] | None = None) -> None:
        super().update(prompt_ids, successes=successes, attempts=attempts, tags=tags)
        if self._judged is not None and self._judged[0] == list(prompt_ids):  # the rounds' rewards: any reward scale
            judged, zero, solved = self._judged[1]
        else:  # called outside collect's rounds: the counts, for binary rewards
            judged, zero, solved = counted_zero_variance(successes=successes.flatten(), attempts=attempts.flatten())
        self._judged = None
        revisits = any(pid in self._streak for pid in prompt_ids)  # not the first pass over these prompts
        before = torch.tensor([self._streak.get(pid, 0) for pid in prompt_ids], dtype=torch.long)
        kind = torch.tensor([self._solved.get(pid, False) for pid in prompt_ids], dtype=torch.bool)
        after, kind = zero_variance_streak(streak=before, solved_before=kind, judged=judged, zero=zero, solved=solved)
        for pid, z, last_solved, seen in zip(prompt_ids, after.tolist(), kind.tolist(), (judged & zero).tolist(), strict=True):
            self._streak[pid] = z
            if seen:
                self._solved[pid] = last_solved
        groups = int(judged.sum())
        # the step's shares of all-solved and all-failed groups steer the two probabilities, once the filter can act:
        # on a first visit every streak is 0 and nothing is skipped (the paper's code adapts from its second epoch)
        if groups and revisits:
            easy, hard = float((zero & solved).sum()) / groups, float((zero & ~solved).sum()) / groups
            self.p_easy = adapt_explore_prob(self.p_easy, zero_share=easy, target=self.target_easy, delta=self.delta,
                                             low=self.p_min, high=self.p_max)
            self.p_hard = adapt_explore_prob(self.p_hard, zero_share=hard, target=self.target_hard, delta=self.delta,
                                             low=self.p_min, high=self.p_max)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "zero_streak": dict(self._streak), "last_solved": dict(self._solved),
                "skip_draws": self._calls, "p_easy": self.p_easy, "p_hard": self.p_hard}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._streak, self._calls = dict(state["zero_streak"]), int(state["skip_draws"])
        # a checkpoint from before the adaptive probabilities: none recorded, start from the configured ones
        self._solved = dict(state.get("last_solved", {}))
        self.p_easy, self.p_hard = float(state.get("p_easy", self.p_easy)), float(state.get("p_hard", self.p_hard))
