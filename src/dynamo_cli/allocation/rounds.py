"""Rollout-side allocators of other papers, the baselines DynaMO's allocation is compared with.

    dapo      DAPO's dynamic sampling (Yu et al. 2025, arXiv 2503.14476, Sec. 3.2): a group whose rewards are all
              equal has zero advantage, so it is dropped and fresh prompts are generated until the step has P
              informative groups (P = trainer.prompts_per_step), for at most `max_rounds` rounds.
    greso     GRESO (Zheng et al. 2025, arXiv 2506.02177): DAPO's dynamic sampling plus a filter *before* rollout:
              a prompt whose last z visits all had zero variance is skipped with probability 1 - p^z, so it is
              re-checked now and then (with probability p^z) rather than never again; p is p_easy or p_hard (last
              seen all solved / all failed), each steered a step at a time towards a target zero-variance share.
    knapsack  Knapsack RL (Li et al. 2025, arXiv 2509.25849): the step's budget B = n P split by a knapsack whose
              items are (prompt, one more rollout), valued by the gain in
              Value(n, p) = (1 - p^n - (1 - p)^n) · p (1 - p)^2  (P(non-zero GRPO gradient) x InfoGain).

All three keep the per-prompt success history of UniformAllocator (logs, live table, checkpoints). dapo and
greso are protocols.RoundAllocator: they use the collect stage's rounds (stages/collect.py), which draws their
fresh prompts from the sampler and keeps the dropped groups' rows out of the loss (every rollout still counts in
rollout/total_rollouts). Pure functions first, with hand-worked tests in tests/test_rollout_allocators.py.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from dynamo_cli.allocation.allocators import Allocation, UniformAllocator, _count_metrics, uniform_rollouts

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


def greso_skip(*, streak: Tensor, explore_prob: Tensor | float, uniform: Tensor) -> Tensor:
    """GRESO's probabilistic pre-rollout filter: a prompt with `streak` = z zero-variance visits in a row is rolled
    out with probability p_e^z (z = 0: always) and skipped otherwise. explore_prob: a float or (P,) per prompt (GRESO:
    p_easy for a prompt last seen all solved, p_hard for one last seen all failed). uniform (P,) in [0, 1).
    Returns skip (P,) bool."""
    return uniform >= torch.as_tensor(explore_prob, dtype=torch.float64) ** streak.double()


def adapt_explore_prob(p: float, *, zero_share: float, target: float, delta: float, low: float, high: float) -> float:
    """GRESO's controller of one exploration probability: the step's share of zero-variance groups of its kind
    (all solved, or all failed) at or above `target` -> explore less (p - delta), below -> more (p + delta),
    kept in [low, high]. delta = 0: a fixed probability."""
    return max(p - delta, low) if zero_share >= target else min(p + delta, high)


def zero_variance_streak(*, streak: Tensor, successes: Tensor, attempts: Tensor) -> Tensor:
    """Consecutive zero-variance visits after this step: +1 where a prompt's >= 2 rollouts all succeeded or all
    failed, 0 where they were mixed, unchanged where it had < 2 rollouts (skipped: no new evidence). (P,) long."""
    k, g = successes.double(), attempts.double()
    zero = (k == 0) | (k == g)
    return torch.where(g < 2, streak, torch.where(zero, streak + 1, torch.zeros_like(streak)))


def knapsack_value(*, rate: Tensor, counts: Tensor) -> Tensor:
    """Knapsack RL's value of n rollouts of a prompt with success rate p: P(the group is not all-equal) · InfoGain(p),
    (1 - p^n - (1 - p)^n) · p (1 - p)^2. rate, counts broadcast; float64."""
    p, n = rate.double(), counts.double()
    return (1 - p**n - (1 - p) ** n) * p * (1 - p) ** 2


def knapsack_rollouts(*, rate: Tensor, budget: int, n_min: int, n_max: int) -> Tensor:
    """Rollouts per prompt maximising Σ_i knapsack_value(p_i, n_i) with Σ n_i = budget (clipped to [n_min P, n_max P])
    and n_min <= n_i <= n_max. Every prompt's marginal gain V(n + 1) - V(n) = p^n (1-p) + (1-p)^n p, times
    InfoGain, falls as n grows (V is concave in n), so taking the budget's largest marginal gains over all
    (prompt, n) pairs is the exact optimum of this separable knapsack (ties: lower prompt index first).
    rate (P,) in (0, 1). Returns (P,) long."""
    num, span = rate.numel(), n_max - n_min
    budget = min(max(int(budget), n_min * num), n_max * num)
    counts = uniform_rollouts(num, n_min)
    if span == 0 or budget == n_min * num:
        return counts
    n = torch.arange(n_min, n_max, dtype=torch.float64)  # (M,) counts before one more rollout
    p = rate.double()[:, None]  # (P, 1)
    gains = knapsack_value(rate=p, counts=n + 1) - knapsack_value(rate=p, counts=n)  # (P, M) non-increasing along M
    chosen = torch.argsort(-gains.flatten(), stable=True)[: budget - n_min * num]  # the largest gains
    return counts + torch.bincount(chosen // span, minlength=num)


def laplace_rate(*, successes: Tensor, attempts: Tensor) -> Tensor:
    """(k + 1) / (G + 2): in (0, 1), so a never-solved prompt still has a value that grows with its rollouts
    (Knapsack RL's point: hard prompts get many) and an unseen prompt starts at 0.5. Our choice."""
    return (successes.double() + 1) / (attempts.double() + 2)


# ----------------------------------------------------------------------------------------------------
# allocators


class DapoAllocator(UniformAllocator):
    """n rollouts per prompt; after each round, the informative groups so far are counted and fresh prompts asked
    for (`fresh_prompts_needed`) until P of them exist or `max_rounds` rounds ran; the round that ends keeps the
    first P informative groups (fewer if the rounds ran out) and drops the rest."""

    def __init__(self, *, n: int, max_rounds: int, explore_min_attempts: int, decay: float):
        super().__init__(n=n, explore_min_attempts=explore_min_attempts, decay=decay)
        self.max_rounds = max_rounds
        self._target = 0  # P: the first round's prompts; set at each step's first next_round

    def next_round(self, prompt_ids: list[str], *, rewards: Tensor, group_index: Tensor, round: int) -> Optional[Allocation]:
        num = len(prompt_ids)
        if round == 1:
            self._target = num
        informative, generated = informative_groups(rewards=rewards, group_index=group_index, num_groups=num)
        found, nothing = int(informative.sum()), torch.zeros(num, dtype=torch.long)
        if found >= self._target or round >= self.max_rounds:
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


class GresoAllocator(DapoAllocator):
    """DapoAllocator whose `allocate` first skips prompts predicted to have zero variance (`greso_skip`), with GRESO's
    two exploration probabilities: p_easy for prompts last seen all solved, p_hard for those last seen all failed,
    each moved by `delta` a step towards its target share of zero-variance groups (`adapt_explore_prob`; targets
    target_zero_variance / 3 easy and 2/3 of it hard, as the paper's code), from the first step that revisits a
    prompt (the paper's code: from its second epoch). The skip draws come from a generator
    seeded by (seed, number of allocate calls); streaks, kinds, probabilities and draws are checkpointed."""

    def __init__(self, *, n: int, max_rounds: int, p_easy: float, p_hard: float, target_zero_variance: float, delta: float,
                 p_min: float, p_max: float, seed: int, explore_min_attempts: int, decay: float):
        super().__init__(n=n, max_rounds=max_rounds, explore_min_attempts=explore_min_attempts, decay=decay)
        self.p_easy, self.p_hard, self.seed = p_easy, p_hard, seed
        self.target_easy, self.target_hard = target_zero_variance / 3, target_zero_variance * 2 / 3
        self.delta, self.p_min, self.p_max = delta, p_min, p_max
        self._streak: dict[str, int] = {}  # prompt id -> zero-variance visits in a row
        self._solved: dict[str, bool] = {}  # prompt id -> its last zero-variance visit was all solved (else all failed)
        self._calls = 0

    def allocate(self, prompt_ids: list[str], *, tags: list[str] | None = None) -> Allocation:
        allocation = super().allocate(prompt_ids, tags=tags)
        streak = torch.tensor([self._streak.get(pid, 0) for pid in prompt_ids], dtype=torch.long)
        explore = torch.tensor([self.p_easy if self._solved.get(pid, False) else self.p_hard for pid in prompt_ids], dtype=torch.float64)
        uniform = torch.rand(len(prompt_ids), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self._calls),
                             dtype=torch.float64)
        self._calls += 1
        skip = greso_skip(streak=streak, explore_prob=explore, uniform=uniform)
        counts = torch.where(skip, torch.zeros_like(allocation.counts), allocation.counts)
        metrics = {**allocation.metrics, **_count_metrics(counts), "alloc/skipped_prompts": float(skip.sum()),
                   "alloc/p_easy": self.p_easy, "alloc/p_hard": self.p_hard}
        return Allocation(counts=counts, priority=allocation.priority, metrics=metrics)

    def next_round(self, prompt_ids: list[str], *, rewards: Tensor, group_index: Tensor, round: int) -> Optional[Allocation]:
        allocation = super().next_round(prompt_ids, rewards=rewards, group_index=group_index, round=round)
        if allocation is not None and allocation.keep is not None:  # the last round: how many the filter saved
            allocation.metrics["alloc/skipped_prompts"] = float(len(prompt_ids) - int(torch.bincount(group_index, minlength=len(prompt_ids)).gt(0).sum()))
        return allocation

    def update(self, prompt_ids: list[str], *, successes: Tensor, attempts: Tensor, tags: list[str] | None = None) -> None:
        super().update(prompt_ids, successes=successes, attempts=attempts, tags=tags)
        k, g = successes.flatten().double(), attempts.flatten().double()
        revisits = any(pid in self._streak for pid in prompt_ids)  # not the first pass over these prompts
        before = torch.tensor([self._streak.get(pid, 0) for pid in prompt_ids], dtype=torch.long)
        after = zero_variance_streak(streak=before, successes=k, attempts=g)
        rolled = g >= 2
        for pid, z, solved, seen in zip(prompt_ids, after.tolist(), (k == g).tolist(), rolled.tolist(), strict=True):
            self._streak[pid] = z
            if seen and z > 0:
                self._solved[pid] = solved
        groups = int(rolled.sum())
        # the step's shares of all-solved and all-failed groups steer the two probabilities, once the filter can act:
        # on a first visit every streak is 0 and nothing is skipped (the paper's code adapts from its second epoch)
        if groups and revisits:
            easy, hard = float(((k == g) & rolled).sum()) / groups, float(((k == 0) & rolled).sum()) / groups
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


class KnapsackAllocator(UniformAllocator):
    """B = n P rollouts split by `knapsack_rollouts` over each prompt's Laplace success rate (decayed history)."""

    def __init__(self, *, n: int, n_min: int, n_max: int, explore_min_attempts: int, decay: float):
        super().__init__(n=n, explore_min_attempts=explore_min_attempts, decay=decay)
        self.n_min, self.n_max = n_min, n_max

    def allocate(self, prompt_ids: list[str], *, tags: list[str] | None = None) -> Allocation:
        if not prompt_ids:
            raise ValueError("allocate needs at least one prompt")
        successes, attempts = self.history(prompt_ids)
        rate = laplace_rate(successes=successes, attempts=attempts)  # (P,)
        counts = knapsack_rollouts(rate=rate, budget=self.n * len(prompt_ids), n_min=self.n_min, n_max=self.n_max)
        informative = 1 - rate**counts - (1 - rate) ** counts  # (P,) P(group not all-equal) at these counts
        metrics = _count_metrics(counts) | {"alloc/history_coverage": self._coverage(self._rows(prompt_ids)),
                                            "alloc/expected_informative": float(informative.mean())}
        return Allocation(counts=counts, priority=rate * (1 - rate) ** 2, metrics=metrics)
