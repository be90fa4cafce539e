"""The pure maths every allocator shares: per-prompt statistics of a 0/1 success history, the exploration top-up,
and splitting an integer budget (water-filling, largest remainders). Tensors over the step's P prompts, CPU.

These run at every step on P-sized vectors (P ~ 10^3..10^4), so they avoid torch's floor/ceil/sqrt kernels: those
split anything over 2048 elements across torch's threads, and on a busy machine waking a sleeping thread costs
milliseconds, a hundred times the arithmetic. A cast to long (truncation) gives the same integers for values >= 0.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def bernoulli_variance(*, successes: Tensor, attempts: Tensor) -> Tensor:
    """Unbiased Bernoulli variance k (G - k) / (G (G - 1)) per prompt; 0 where G < 2.

    k = successes, G = attempts (float: decayed statistics are not integers). docs/algorithm.md, "P_i".
    """
    k, g = successes.double(), attempts.double()  # (P,), (P,)
    enough = g >= 2
    denom = torch.where(enough, g * (g - 1), torch.ones_like(g))  # 1 avoids 0/0 where G < 2
    return torch.where(enough, (k * (g - k) / denom).clamp(min=0), torch.zeros_like(g))


def laplace_rate(*, successes: Tensor, attempts: Tensor) -> Tensor:
    """(k + 1) / (G + 2): the success rate with one pseudo-success and one pseudo-failure (Laplace's rule), in (0, 1).
    An unseen prompt sits at 0.5 and one lucky rollout does not make a prompt look solved; a never-solved prompt still
    has a rate that falls as its rollouts grow (Knapsack RL's value then keeps giving it rollouts; a curriculum
    ordered by success ranks it hard). Our choice. Returns float64, the shape of the inputs."""
    return (successes.double() + 1) / (attempts.double() + 2)


def exploration_need(*, attempts: Tensor, explore_min_attempts: int) -> Tensor:
    """Rollouts each prompt still needs to reach g0 = explore_min_attempts lifetime attempts: ceil(g0 - A)^+.

    A = *undecayed* lifetime attempts (docs/algorithm.md, "Our choices" (a), (c)): A = 3 of g0 = 4 needs 1.
    Returns (P,) long."""
    short = (explore_min_attempts - attempts.double()).clamp(min=0)  # (P,) >= 0
    whole = short.long()  # truncation: the floor, as short >= 0
    return whole + (short > whole)  # the ceiling


def uniform_rollouts(num_prompts: int, n: int) -> Tensor:
    """n rollouts for every prompt (the GRPO baseline). Returns (P,) long."""
    return torch.full((num_prompts,), n, dtype=torch.long)


def water_fill(*, weights: Tensor, caps: Tensor, budget: int) -> Tensor:
    """Split `budget` integer units ∝ `weights` without exceeding the integer `caps`; sum == budget exactly.

    Continuous solution: find lambda with sum_i min(cap_i, lambda w_i) = budget. Sorting items by the level
    t_i = cap_i / w_i at which they saturate makes that sum piecewise linear in lambda, so one sort and two
    cumulative sums locate lambda. Then floor, and hand out the remaining units by largest remainder (ties
    -> lower index). Items with cap 0 may have weight 0; every other weight must be > 0.
    Returns (P,) long.
    """
    w, caps = weights.double(), caps.long()  # (P,), (P,)
    if (caps < 0).any():
        raise ValueError("caps must be >= 0")
    if not ((w > 0) | (caps == 0)).all() or not torch.isfinite(w).all():
        raise ValueError("weights must be finite and > 0 wherever caps > 0")
    total = int(caps.sum())
    if budget < 0 or budget > total:
        raise ValueError(f"budget {budget} must be in [0, sum(caps)={total}]")
    alloc = torch.zeros_like(caps)
    if budget == 0:
        return alloc

    level = torch.where(caps == 0, torch.zeros_like(w), caps / w.clamp(min=1e-300))  # (P,) saturation lambda
    order = torch.sort(level, stable=True).indices
    lvl, c, ws = level.index_select(0, order), caps.index_select(0, order).double(), w.index_select(0, order)
    caps_upto = torch.cumsum(c, 0)  # caps of items saturated at lambda = lvl[j] (j included)
    w_after = ws.sum() - torch.cumsum(ws, 0)  # weights still growing past lvl[j]
    filled = caps_upto + lvl * w_after  # (P,) sum_i min(cap_i, lvl[j] w_i), non-decreasing
    j = int(torch.searchsorted(filled, torch.tensor([float(budget)], dtype=filled.dtype)).clamp(max=len(c) - 1))
    lam = (budget - (caps_upto[j] - c[j])) / (w_after[j] + ws[j])

    x = torch.minimum(lam * w, caps.double())  # (P,) continuous shares, >= 0
    alloc = x.long()  # the floor (x >= 0)
    frac = x - alloc
    short = budget - int(alloc.sum())  # in [0, #items with frac > 0) up to float error, hence the loop
    while short > 0:  # runs once unless rounding error left an item short; never loops per unit
        key = torch.where(alloc < caps, frac, torch.full_like(frac, -1.0))
        take = largest_first(key, min(short, int((alloc < caps).sum())))
        alloc[take] += 1
        frac[take] = -0.5  # already rounded up: go last in a (rare) second pass
        short -= len(take)
    return alloc


def largest_first(values: Tensor, k: int) -> Tensor:
    """Indices of the k largest values, ties to the lower index: the set a stable descending sort puts first,
    in O(P) (a selection, not a sort of all P). Unordered. values (P,) finite, 0 <= k <= P. Returns (k,) long."""
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    # the k-th largest value by numpy's introselect: torch.kthvalue degrades to ~10x slower on the remainders this
    # is called on (many equal values: the -1 of every capped item), 0.11 s against 1 ms for 10^6 of them
    ascending = values.detach().cpu().double().contiguous().numpy()
    kth = float(np.partition(ascending, len(ascending) - k)[len(ascending) - k])
    above = (values > kth).nonzero().flatten()
    ties = (values == kth).nonzero().flatten()[: k - len(above)]  # nonzero is in index order: the lower indices
    return torch.cat([above, ties])
