"""allocator=knapsack: Knapsack RL (Li et al. 2025, arXiv 2509.25849). The step's budget B = n P is split by a
knapsack whose items are (prompt, one more rollout), valued by the gain in

    Value(n, p) = (1 - p^n - (1 - p)^n) · p (1 - p)^2      (P(non-zero GRPO gradient) x InfoGain)

with p the prompt's Laplace success rate (maths.laplace_rate) over its (decayed) history. Hand-worked tests in
tests/test_rollout_allocators.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dynamo_cli.allocation.base import ALLOCATORS, Allocation, AllocatorConfig, HistoryAllocator, RolloutBounds, count_metrics
from dynamo_cli.allocation.maths import laplace_rate, uniform_rollouts

# |computed - exact| marginal gain, in units of InfoGain(p) = p (1-p)^2: 6 roundings of each value (1 - p^n - (1-p)^n
# times p (1-p)^2, every term <= 1) and one of their difference, with room to spare
GAIN_ERROR = 16 * float(np.finfo(np.float64).eps)


@dataclass
class KnapsackAllocatorConfig(RolloutBounds, AllocatorConfig):
    """Knapsack RL (arXiv 2509.25849): n_i maximise Σ_i (1 - p_i^n_i - (1 - p_i)^n_i) · p_i (1 - p_i)^2 (the chance of
    a non-zero GRPO gradient times its information gain) under Σ n_i = budget and n_min <= n_i <= n_max."""

    name: str = "knapsack"
    n_min: int = 2  # fewest rollouts a prompt gets (2: a group needs two rollouts to have variance)
    n_max: int = 64  # most rollouts a prompt gets (the paper lets a hard prompt take up to ~93)

    def __post_init__(self) -> None:
        super().__post_init__()  # RolloutBounds: n_min >= 1, n_min <= n_max


# ----------------------------------------------------------------------------------------------------
# pure functions


def knapsack_value(*, rate: Tensor, counts: Tensor) -> Tensor:
    """Knapsack RL's value of n rollouts of a prompt with success rate p: P(the group is not all-equal) · InfoGain(p),
    (1 - p^n - (1 - p)^n) · p (1 - p)^2. rate, counts broadcast; float64."""
    p, n = rate.double(), counts.double()
    return (1 - p**n - (1 - p) ** n) * p * (1 - p) ** 2


def marginal_gains(*, rate: Tensor, counts: Tensor) -> Tensor:
    """knapsack_value(n + 1) - knapsack_value(n): what one more rollout adds at each count n. Mathematically
    (p^n (1-p) + (1-p)^n p) · InfoGain(p), which falls as n grows (V is concave in n); computed as a difference of
    values, it is off by at most GAIN_ERROR · InfoGain(p) (rounding), so where the gains are that small (n > ~45 at
    p = 0.5) consecutive ones may rise. rate (R, 1), counts (J,) -> (R, J) float64."""
    return knapsack_value(rate=rate, counts=counts + 1) - knapsack_value(rate=rate, counts=counts)


def knapsack_rollouts(*, rate: Tensor, budget: int, n_min: int, n_max: int) -> Tensor:
    """Rollouts per prompt maximising Σ_i knapsack_value(p_i, n_i) with Σ n_i = budget (clipped to [n_min P, n_max P])
    and n_min <= n_i <= n_max. Every prompt's marginal gain falls as n grows (`marginal_gains`), so taking the
    budget's K = budget - n_min P largest gains over all (prompt, n) pairs of the (P, n_max - n_min) table is the
    exact optimum of this separable knapsack (ties: lower prompt index first, then lower n).

    The table is never built: prompts with the same rate have the same row, so rows are computed once per distinct
    rate and counted once per prompt that has it; and only a prefix of each row is computed (K / P + 1 columns,
    doubled for the rows that need more), because every gain past a row's last computed one is at most that one, so
    once that one lies below the K-th largest computed gain by more than twice the rounding error, nothing past it
    can be among the K. At P = 4096, n = 8, n_max = 64 that is at most a fifth of the table's 254k gains, each four
    pows, and a few percent where rates repeat (integer histories: a few hundred distinct rates).
    rate (P,) in (0, 1). Returns (P,) long."""
    num, span = rate.numel(), n_max - n_min
    budget = min(max(int(budget), n_min * num), n_max * num)
    counts = uniform_rollouts(num, n_min)
    extra = budget - n_min * num  # K: the rollouts beyond n_min, one per chosen gain
    if span == 0 or extra == 0:
        return counts
    rates, group, size = np.unique(rate.double().numpy(), return_inverse=True, return_counts=True)  # (U,), (P,), (U,)
    table = np.full((len(rates), span), -np.inf)  # (U, span) the gains computed so far; -inf: not yet
    slack = 2 * GAIN_ERROR * rates * (1 - rates) ** 2  # (U,) how far a row's computed gains may rise past each other
    grow, width, upto = np.arange(len(rates)), 0, min(span, extra // num + 1)  # rows to compute, by columns [width, upto)
    while True:
        n = torch.arange(n_min + width, n_min + upto, dtype=torch.float64)
        table[grow, width:upto] = marginal_gains(rate=torch.from_numpy(rates[grow, None]), counts=n).numpy()
        computed = table > -np.inf
        values = table[computed]
        order = np.argsort(values)[::-1]  # descending
        units = np.cumsum(np.broadcast_to(size[:, None], table.shape)[computed][order])  # prompts holding each gain
        kth = values[order[np.searchsorted(units, extra)]]  # the K-th largest gain over all prompts
        grow = grow[table[grow, upto - 1] + slack[grow] >= kth]  # rows whose next gains might still be among the K
        if upto == span or not len(grow):
            break
        width, upto = upto, min(span, 2 * upto)
    above, ties = (table > kth).sum(1)[group], (table == kth).sum(1)[group]  # (P,) each prompt's gains > and == kth
    left = extra - int(above.sum())  # units at kth, handed out in table order: by prompt index, then by n
    before = np.cumsum(ties) - ties
    return counts + torch.from_numpy(above + np.clip(left - before, 0, ties))


# ----------------------------------------------------------------------------------------------------
# the allocator


@ALLOCATORS.register("knapsack", schema=KnapsackAllocatorConfig)
class KnapsackAllocator(HistoryAllocator):
    """B = n P rollouts split by `knapsack_rollouts` over each prompt's Laplace success rate (decayed history)."""

    def __init__(self, *, n: int, n_min: int, n_max: int, explore_min_attempts: int, decay: float):
        super().__init__(n=n, explore_min_attempts=explore_min_attempts, decay=decay)
        self.n_min, self.n_max = n_min, n_max

    def allocate(self, prompt_ids: list[str], *, tags: list[str] | None = None) -> Allocation:
        if not prompt_ids:
            raise ValueError("allocate needs at least one prompt")
        rows = self._rows(prompt_ids)  # (P,)
        rate = laplace_rate(successes=self._gather(self._successes, rows), attempts=self._gather(self._attempts, rows))  # (P,)
        counts = knapsack_rollouts(rate=rate, budget=self.n * len(prompt_ids), n_min=self.n_min, n_max=self.n_max)
        informative = 1 - rate**counts - (1 - rate) ** counts  # (P,) P(group not all-equal) at these counts
        metrics = count_metrics(counts) | {"alloc/history_coverage": self._coverage(rows),
                                            "alloc/expected_informative": float(informative.mean())}
        return Allocation(counts=counts, priority=rate * (1 - rate) ** 2, metrics=metrics)
