"""Rollout allocation (DynaMO Part 1, arXiv 2602.19208; docs/algorithm.md "Part 1").

Pure pieces first -- (success history, budget, bounds) -> rollouts per prompt -- then two small stateful
allocators that keep the per-prompt history the training loop saves in its checkpoints.

Why: the summed variance of per-prompt gradient estimates, sum_i sigma_i^2 / n_i with sum_i n_i = B, is
minimised by n_i ∝ sigma_i (Neyman allocation). The paper's proxy for sigma_i^2 is the unbiased Bernoulli
variance of the prompt's 0/1 success history.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

WEIGHTS = ("variance", "std")


# ----------------------------------------------------------------------------------------------------
# pure functions


def bernoulli_variance(*, successes: Tensor, attempts: Tensor) -> Tensor:
    """Unbiased Bernoulli variance k (G - k) / (G (G - 1)) per prompt; 0 where G < 2.

    k = successes, G = attempts (float: decayed statistics are not integers). algorithm.md, "P_i".
    """
    k, g = successes.double(), attempts.double()  # (P,), (P,)
    enough = g >= 2
    denom = torch.where(enough, g * (g - 1), torch.ones_like(g))  # 1 avoids 0/0 where G < 2
    return torch.where(enough, (k * (g - k) / denom).clamp(min=0), torch.zeros_like(g))


def variance_priority(
    *,
    successes: Tensor,
    attempts: Tensor,
    explore_min_attempts: float = 4,
    mastered_threshold: float = 0.85,
    floor: float = 0.01,
    unexplored_priority: float = 0.25,
    weight: str = "variance",
) -> tuple[Tensor, Tensor]:
    """Informativeness of each prompt, as in the reference code (algorithm.md, "Reference-code behaviour").

    - G < explore_min_attempts (g0): "unexplored"; priority `unexplored_priority`. Our choice: 0.25 is the
      largest p (1 - p), i.e. nothing known -> maximal uncertainty. (The unbiased estimator can exceed it
      for tiny G, e.g. k = 2, G = 4 gives 1/3, so well-explored 50/50 prompts still outrank unknown ones.)
    - success rate >= mastered_threshold: `floor` (mastered prompts teach little).
    - otherwise max(P + 1e-6 (1 - acc), floor); the 1e-6 term breaks ties towards harder prompts and
      never-solved prompts (P = 0) land on the floor.
    weight="std" takes sqrt of the *final* priority (floor and unexplored values included), giving the
    Neyman-optimal n_i ∝ sigma_i instead of the reference's n_i ∝ sigma_i^2.

    Returns (priority (P,) float64, unexplored (P,) bool).
    """
    if weight not in WEIGHTS:
        raise ValueError(f"weight must be one of {WEIGHTS}, got {weight!r}")
    k, g = successes.double(), attempts.double()  # (P,), (P,)
    unexplored = g < explore_min_attempts
    acc = k / g.clamp(min=1e-12)
    explored_priority = (bernoulli_variance(successes=k, attempts=g) + 1e-6 * (1 - acc)).clamp(min=floor)
    priority = torch.where(acc >= mastered_threshold, torch.full_like(g, floor), explored_priority)
    priority = torch.where(unexplored, torch.full_like(g, unexplored_priority), priority)
    if weight == "std":
        priority = priority.sqrt()
    return priority, unexplored


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
    lvl, c, ws = level[order], caps[order].double(), w[order]
    caps_upto = torch.cumsum(c, 0)  # caps of items saturated at lambda = lvl[j] (j included)
    w_after = ws.sum() - torch.cumsum(ws, 0)  # weights still growing past lvl[j]
    filled = caps_upto + lvl * w_after  # (P,) sum_i min(cap_i, lvl[j] w_i), non-decreasing
    j = int(torch.searchsorted(filled, torch.tensor([float(budget)], dtype=filled.dtype)).clamp(max=len(c) - 1))
    lam = (budget - (caps_upto[j] - c[j])) / (w_after[j] + ws[j])

    x = torch.minimum(lam * w, caps.double())  # (P,) continuous shares
    alloc = x.floor().long()
    frac = x - alloc
    short = budget - int(alloc.sum())  # in [0, #items with frac > 0) up to float error, hence the loop
    while short > 0:  # runs once unless rounding error left an item short; never loops per unit
        key = torch.where(alloc < caps, frac, torch.full_like(frac, -1.0))
        take = torch.sort(-key, stable=True).indices[: min(short, int((alloc < caps).sum()))]
        alloc[take] += 1
        frac[take] = -0.5  # already rounded up: go last in a (rare) second pass
        short -= len(take)
    return alloc


def uniform_rollouts(num_prompts: int, n: int) -> Tensor:
    """n rollouts for every prompt (the GRPO baseline). Returns (P,) long."""
    return torch.full((num_prompts,), n, dtype=torch.long)


def allocate_rollouts(
    *, priority: Tensor, unexplored: Tensor, budget: int, n_min: int, n_max: int, explore_target: int
) -> Tensor:
    """Rollouts per prompt: n_min <= n_i <= n_max and sum == budget clipped to [n_min P, n_max P].

    Our fill order (algorithm.md, "Our choices"): (1) every prompt gets n_min; (2) unexplored prompts are
    topped up toward explore_target (capped at n_max) -- if the budget cannot cover every need it is shared
    ∝ need by largest remainder; (3) the rest is water-filled ∝ priority with caps n_max - n_i.
    The reference does (2) before (1), which can leave prompts below n_min (defect 5).
    Returns (P,) long.
    """
    if n_min < 0 or n_max < n_min:
        raise ValueError(f"need 0 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
    num = priority.numel()
    if not ((priority > 0).all() and torch.isfinite(priority).all()):
        raise ValueError("priority must be finite and > 0")
    budget = min(max(int(budget), n_min * num), n_max * num)
    counts = uniform_rollouts(num, n_min)  # (1)
    left = budget - n_min * num

    need = torch.where(unexplored, torch.full_like(counts, max(min(explore_target, n_max) - n_min, 0)), 0)
    if int(need.sum()) <= left:  # (2)
        counts += need
        left -= int(need.sum())
    else:
        counts += water_fill(weights=need.double(), caps=need, budget=left)
        left = 0

    counts += water_fill(weights=priority, caps=n_max - counts, budget=left)  # (3)
    return counts


# ----------------------------------------------------------------------------------------------------
# stateful allocators used by the training loop


@dataclass
class Allocation:
    counts: Tensor  # (P,) long, rollouts per prompt, sum == budget
    priority: Tensor  # (P,) informativeness used (uniform: ones)
    metrics: dict[str, float] = field(default_factory=dict)  # alloc/...


def _count_metrics(counts: Tensor) -> dict[str, float]:
    c = counts.double()
    return {
        "alloc/min": float(c.min()),
        "alloc/max": float(c.max()),
        "alloc/mean": float(c.mean()),
        "alloc/std": float(c.std(unbiased=False)),
        "alloc/budget": float(c.sum()),
    }


class UniformAllocator:
    """n rollouts per prompt. Still records each prompt's success history (for logs and display).

    History is keyed by the stable prompt id string. `update` first multiplies *all* stored statistics by
    `decay` (per call, i.e. per training step, not per visit of that prompt), then adds this step's counts;
    decay = 1.0 keeps the cumulative history of the reference code.
    """

    def __init__(self, *, n: int, decay: float = 1.0):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.n, self.decay = n, decay
        self._index: dict[str, int] = {}  # prompt id -> row in the stats tensors
        self._successes = torch.zeros(0, dtype=torch.float64)
        self._attempts = torch.zeros(0, dtype=torch.float64)

    def allocate(self, prompt_ids: list[str]) -> Allocation:
        if not prompt_ids:
            raise ValueError("allocate needs at least one prompt")
        counts = uniform_rollouts(len(prompt_ids), self.n)
        return Allocation(counts=counts, priority=torch.ones(len(prompt_ids)), metrics=_count_metrics(counts))

    def update(self, prompt_ids: list[str], *, successes: Tensor, attempts: Tensor) -> None:
        """Add this step's per-prompt counts (duplicates in prompt_ids accumulate)."""
        successes, attempts = successes.double().flatten(), attempts.double().flatten()
        if not len(prompt_ids) == len(successes) == len(attempts):
            raise ValueError(f"got {len(prompt_ids)} ids, {len(successes)} successes, {len(attempts)} attempts")
        if (successes < 0).any() or (successes > attempts).any():
            raise ValueError("need 0 <= successes <= attempts")
        for pid in prompt_ids:
            if pid not in self._index:
                self._index[pid] = len(self._index)
        grow = len(self._index) - len(self._attempts)
        self._successes = torch.cat([self._successes * self.decay, torch.zeros(grow, dtype=torch.float64)])
        self._attempts = torch.cat([self._attempts * self.decay, torch.zeros(grow, dtype=torch.float64)])
        rows = torch.tensor([self._index[pid] for pid in prompt_ids], dtype=torch.long)
        self._successes.index_add_(0, rows, successes)
        self._attempts.index_add_(0, rows, attempts)

    def history(self, prompt_ids: list[str]) -> tuple[Tensor, Tensor]:
        """Lifetime (decayed) (successes (P,), attempts (P,)) float64; zeros for unseen prompts."""
        rows = torch.tensor([self._index.get(pid, -1) for pid in prompt_ids], dtype=torch.long)  # -1: unseen
        seen = rows >= 0
        successes = torch.zeros(len(prompt_ids), dtype=torch.float64)
        attempts = torch.zeros(len(prompt_ids), dtype=torch.float64)
        successes[seen], attempts[seen] = self._successes[rows[seen]], self._attempts[rows[seen]]
        return successes, attempts

    def state_dict(self) -> dict:
        """Plain python types (str / float lists), saveable with torch.save or json."""
        return {
            "prompt_ids": list(self._index),
            "successes": self._successes.tolist(),
            "attempts": self._attempts.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        ids = list(state["prompt_ids"])
        if not len(ids) == len(state["successes"]) == len(state["attempts"]):
            raise ValueError("allocator state: prompt_ids, successes and attempts differ in length")
        self._index = {pid: i for i, pid in enumerate(ids)}
        self._successes = torch.tensor(state["successes"], dtype=torch.float64)
        self._attempts = torch.tensor(state["attempts"], dtype=torch.float64)


class VarianceAllocator(UniformAllocator):
    """DynaMO's variance-based allocator: B = n P rollouts split by `variance_priority` + `allocate_rollouts`.

    Unexplored prompts are topped up toward max(n_min, explore_min_attempts) rollouts this step.
    """

    def __init__(
        self,
        *,
        n: int,
        n_min: int,
        n_max: int,
        explore_min_attempts: int = 4,
        mastered_threshold: float = 0.85,
        floor: float = 0.01,
        unexplored_priority: float = 0.25,
        weight: str = "variance",
        decay: float = 1.0,
    ):
        super().__init__(n=n, decay=decay)
        if n_min < 1:
            raise ValueError(f"n_min must be >= 1, got {n_min}")
        if not n_min <= n <= n_max:
            raise ValueError(f"need n_min <= n <= n_max, got n_min={n_min}, n={n}, n_max={n_max}")
        if explore_min_attempts < 0:
            raise ValueError(f"explore_min_attempts must be >= 0, got {explore_min_attempts}")
        if not 0 < mastered_threshold <= 1:
            raise ValueError(f"mastered_threshold must be in (0, 1], got {mastered_threshold}")
        if floor <= 0:
            raise ValueError(f"floor must be > 0, got {floor}")
        if unexplored_priority <= 0:
            raise ValueError(f"unexplored_priority must be > 0, got {unexplored_priority}")
        if weight not in WEIGHTS:
            raise ValueError(f"weight must be one of {WEIGHTS}, got {weight!r}")
        self.n_min, self.n_max = n_min, n_max
        self.explore_min_attempts, self.mastered_threshold = explore_min_attempts, mastered_threshold
        self.floor, self.unexplored_priority, self.weight = floor, unexplored_priority, weight

    def allocate(self, prompt_ids: list[str]) -> Allocation:
        if not prompt_ids:
            raise ValueError("allocate needs at least one prompt")
        successes, attempts = self.history(prompt_ids)  # (P,), (P,)
        priority, unexplored = variance_priority(
            successes=successes,
            attempts=attempts,
            explore_min_attempts=self.explore_min_attempts,
            mastered_threshold=self.mastered_threshold,
            floor=self.floor,
            unexplored_priority=self.unexplored_priority,
            weight=self.weight,
        )
        counts = allocate_rollouts(
            priority=priority,
            unexplored=unexplored,
            budget=self.n * len(prompt_ids),
            n_min=self.n_min,
            n_max=self.n_max,
            explore_target=max(self.n_min, self.explore_min_attempts),
        )
        mastered = ~unexplored & (successes / attempts.clamp(min=1e-12) >= self.mastered_threshold)
        metrics = _count_metrics(counts) | {
            "alloc/unexplored_frac": float(unexplored.double().mean()),
            "alloc/mastered_frac": float(mastered.double().mean()),
        }
        return Allocation(counts=counts, priority=priority, metrics=metrics)
