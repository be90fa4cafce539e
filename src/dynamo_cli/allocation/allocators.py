"""Rollout allocation (DynaMO Part 1, arXiv 2602.19208; docs/algorithm.md "Part 1").

Pure pieces first -- (success history, budget, bounds) -> rollouts per prompt -- then two small stateful
allocators that keep the per-prompt history the training loop saves in its checkpoints.

Why: the summed variance of per-prompt gradient estimates, sum_i sigma_i^2 / n_i with sum_i n_i = B, is
minimised by n_i ∝ sigma_i (Neyman allocation). The paper's proxy for sigma_i^2 is the unbiased Bernoulli
variance of the prompt's 0/1 success history. Every hyperparameter is a required keyword here: its default
and its check live in the schema (config/), once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import Tensor

WEIGHTS = ("variance", "std")
PRIORS = ("none", "tag")
TIE_BREAK = 1e-6  # P + 1e-6 (1 - acc): among equal variances the harder prompt wins (the reference's term)


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


def sum_of_squares(*, successes: Tensor, attempts: Tensor) -> tuple[Tensor, Tensor]:
    """Within-prompt sum of squares SS = k (G - k) / G of the 0/1 outcomes and its degrees of freedom G - 1,
    both 0 where G < 2, so SS / dof is `bernoulli_variance`. Sums of (SS, dof) over prompts pool variances.
    Returns (SS (P,), dof (P,)) float64."""
    k, g = successes.double(), attempts.double()  # (P,), (P,)
    enough = g >= 2
    ss = (k * (g - k) / g.clamp(min=2)).clamp_(min=0).mul_(enough)  # in place: this runs over every stored prompt
    return ss, (g - 1).mul_(enough)


@dataclass
class TagPool:
    """Pooled (decayed) statistics of every stored prompt of each tag; (T,) float64 each."""

    rate: Tensor  # Σ k / Σ G: the tag's success rate
    variance: Tensor  # Σ SS / Σ dof: the tag's pooled *within-prompt* Bernoulli variance
    has_evidence: Tensor  # bool, Σ dof > 0; a tag without evidence lends nothing (prior weight 0)


def tag_pool(*, successes: Tensor, attempts: Tensor, tag_ids: Tensor, num_tags: int) -> TagPool:
    """Pool prompts by tag (tag_ids (N,) long in [0, num_tags), -1 = untagged and left out); vectorised.

    The variance pools sums of squares, not rates: a tag whose prompts are each always or never solved has
    rate .5 but within-prompt variance 0, and 0 is what a new prompt of that tag most likely has.
    """
    k, g = successes.double(), attempts.double()  # (N,), (N,)
    ss, dof = sum_of_squares(successes=k, attempts=g)
    bins = torch.where(tag_ids >= 0, tag_ids, num_tags)  # untagged rows go to an extra bin, dropped below
    tk, tg, tss, tdof = (torch.bincount(bins, weights=v, minlength=num_tags + 1)[:num_tags] for v in (k, g, ss, dof))
    return TagPool(rate=tk / tg.clamp(min=1e-12), variance=tss / tdof.clamp(min=1e-12), has_evidence=tdof > 0)


def shrunk_estimates(
    *, successes: Tensor, attempts: Tensor, prior_rate: Tensor, prior_variance: Tensor, prior_strength: Tensor
) -> tuple[Tensor, Tensor]:
    """Each prompt's success rate and Bernoulli variance, its own evidence plus m pseudo-observations of its tag:

        acc = (k + m p_tag) / (G + m)            m pseudo-attempts at the tag's success rate
        P   = (SS + m V_tag) / (dof + m)         m pseudo-degrees of freedom at the tag's pooled variance

    SS, dof from `sum_of_squares` (0 where G < 2). m = 0 gives the paper's acc = k / G and P = k (G-k) / (G (G-1)).
    Where dof + m = 0 (G < 2 and no prior) P is the plug-in acc (1 - acc): 0 for integer G <= 1, defined for
    the fractional G that decay leaves. prior_* are (P,) float64, prior_strength = m per prompt (0: no prior).
    Returns (acc (P,), P (P,)) float64.
    """
    k, g, m = successes.double(), attempts.double(), prior_strength.double()  # (P,) each
    ss, dof = sum_of_squares(successes=k, attempts=g)
    acc = (k + m * prior_rate) / (g + m).clamp(min=1e-12)
    pooled = dof + m
    variance = torch.where(pooled > 0, (ss + m * prior_variance) / pooled.clamp(min=1e-12), acc * (1 - acc))
    return acc, variance


def variance_priority(
    *,
    acc: Tensor,
    variance: Tensor,
    unknown: Tensor,
    mastered_threshold: float,
    floor: float,
    unexplored_priority: float,
    weight: str,
) -> Tensor:
    """Informativeness of each prompt (algorithm.md, "Reference-code behaviour"), from `shrunk_estimates`.

    - unknown (unexplored, nothing borrowed): `unexplored_priority`, a variance. Our choice: 0.25 is the
      largest p (1 - p), i.e. nothing known -> maximal uncertainty.
    - acc >= mastered_threshold: `floor` (mastered prompts teach little).
    - otherwise max(w(P + 1e-6 (1 - acc)), floor); the 1e-6 term breaks ties towards harder prompts and
      never-solved prompts (P = 0) land on the floor.
    w is the identity (weight="variance", the reference's n_i ∝ sigma_i^2) or sqrt (weight="std", Neyman's
    n_i ∝ sigma_i), applied to the variances (unexplored_priority included) *before* the floor, so `floor`
    is the smallest final weight in both modes (README, "Allocator: our choices" (b)).
    Returns priority (P,) float64, every value >= floor.
    """
    if weight not in WEIGHTS:
        raise ValueError(f"weight must be one of {WEIGHTS}, got {weight!r}")
    a, v = acc.double(), variance.double()  # (P,), (P,)
    v, fixed = v + TIE_BREAK * (1 - a), unexplored_priority
    if weight == "std":
        v, fixed = v.sqrt(), fixed**0.5
    priority = v.clamp(min=floor)
    priority = torch.where(a >= mastered_threshold, torch.full_like(a, floor), priority)
    return torch.where(unknown, torch.full_like(a, max(fixed, floor)), priority)


def exploration_need(*, attempts: Tensor, explore_min_attempts: int) -> Tensor:
    """Rollouts each prompt still needs to reach g0 = explore_min_attempts lifetime attempts: ceil(g0 - A)^+.

    A = *undecayed* lifetime attempts (README, "Allocator: our choices" (a), (c)): A = 3 of g0 = 4 needs 1.
    Returns (P,) long."""
    return (explore_min_attempts - attempts.double()).ceil().clamp(min=0).long()


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

    x = torch.minimum(lam * w, caps.double())  # (P,) continuous shares
    alloc = x.floor().long()
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


def uniform_rollouts(num_prompts: int, n: int) -> Tensor:
    """n rollouts for every prompt (the GRPO baseline). Returns (P,) long."""
    return torch.full((num_prompts,), n, dtype=torch.long)


def allocate_rollouts(*, priority: Tensor, explore_need: Tensor, budget: int, n_min: int, n_max: int) -> Tensor:
    """Rollouts per prompt: n_min <= n_i <= n_max and sum == budget clipped to [n_min P, n_max P].

    Our fill order (algorithm.md, "Our choices"): (1) every prompt gets n_min; (2) prompts short of g0 attempts
    are topped up to their `explore_need` (`exploration_need`; capped at n_max) -- if the budget cannot cover
    every need it is shared ∝ need by largest remainder; (3) the rest is water-filled ∝ priority with caps
    n_max - n_i. The reference does (2) before (1), which can leave prompts below n_min (defect 5).
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

    need = (explore_need.long().clamp(max=n_max) - n_min).clamp(min=0)  # (P,) beyond n_min
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
    # rounds (protocols.RoundAllocator): a round allocation may ask for `fresh` new prompts from the sampler (which
    # `allocate` then splits rollouts among), and the round that ends the step may name the groups that enter the loss
    fresh: int = 0
    keep: Optional[Tensor] = None  # (P,) bool over the step's prompts so far; None: every group


def _count_metrics(counts: Tensor) -> dict[str, float]:
    """Spread of the step's allocation; alloc/cv = std / mean is scale-free, so runs with different n compare
    (uniform: 0). Quantiles of the counts are logged by the recipe (alloc/counts_p*)."""
    c = counts.double()
    mean, std = float(c.mean()), float(c.std(unbiased=False))
    return {
        "alloc/min": float(c.min()),
        "alloc/max": float(c.max()),
        "alloc/mean": mean,
        "alloc/std": std,
        "alloc/cv": std / mean if mean > 0 else 0.0,
        "alloc/budget": float(c.sum()),
    }


class PromptIds(list):
    """A step's prompt ids (a list of str, as every allocator takes) that also carry their positions in the run's
    prompt pool: `keys` (P,) long, and `pool`, the pool they index (any object; compared by identity). An
    allocator that has seen a pool's keys resolves ids to its rows by one tensor gather instead of a dict lookup
    per id (the one Python loop over prompts in `allocate`); a plain list still works, by the dict."""

    def __init__(self, ids, *, keys: Tensor, pool: object):
        super().__init__(ids)
        if len(keys) != len(self):
            raise ValueError(f"got {len(keys)} keys for {len(self)} prompt ids")
        self.keys, self.pool = keys.long(), pool


class UniformAllocator:
    """n rollouts per prompt. Still records each prompt's success history (for logs, display and the
    alloc/history_coverage metric, so GRPO runs report the same evidence as DynaMO runs).

    History is keyed by the stable prompt id string. `update` first multiplies *all* stored (successes,
    attempts) by `decay` (per call, i.e. per training step, not per visit of that prompt), then adds this
    step's counts; decay = 1.0 keeps the cumulative history of the reference code. Alongside, each prompt keeps
    its *undecayed* attempt count (exploration status and coverage, README "Allocator: our choices" (c)) and
    its tag (`tags=`, e.g. the difficulty level; the variance allocator's prior pools by it).
    """

    def __init__(self, *, n: int, explore_min_attempts: int, decay: float):
        self.n, self.explore_min_attempts, self.decay = n, explore_min_attempts, decay
        self._index: dict[str, int] = {}  # prompt id -> row in the stats tensors
        self._tag_index: dict[str, int] = {}  # tag -> tag id
        self._successes = torch.zeros(0, dtype=torch.float64)  # (N,) decayed
        self._attempts = torch.zeros(0, dtype=torch.float64)  # (N,) decayed
        self._total_attempts = torch.zeros(0, dtype=torch.float64)  # (N,) undecayed
        self._tag_of = torch.zeros(0, dtype=torch.long)  # (N,) tag id, -1 = none given
        # the last lookup (a copy of its ids, their rows): a step's allocate, next_round and update ask for the same
        # ids, so only the first pays the per-id dict lookup (the one Python loop over prompts). Rows never move
        # once assigned, so it stays valid until an id is added or the state is loaded.
        self._looked_up: tuple[list[str], Tensor] | None = None
        # PromptIds' pool keys -> rows (-1: not resolved yet), for the one pool seen last: a cache of `_index`,
        # never checkpointed (rebuilt from the ids on the first step after a resume)
        self._key_pool: object | None = None
        self._key_rows = torch.zeros(0, dtype=torch.long)

    def allocate(self, prompt_ids: list[str], *, tags: list[str] | None = None) -> Allocation:
        if not prompt_ids:
            raise ValueError("allocate needs at least one prompt")
        counts = uniform_rollouts(len(prompt_ids), self.n)
        rows = self._rows(prompt_ids)
        metrics = _count_metrics(counts) | {"alloc/history_coverage": self._coverage(rows)}
        return Allocation(counts=counts, priority=torch.ones(len(prompt_ids)), metrics=metrics)

    def update(self, prompt_ids: list[str], *, successes: Tensor, attempts: Tensor, tags: list[str] | None = None) -> None:
        """Add this step's per-prompt counts (duplicates in prompt_ids accumulate); `tags` aligned with prompt_ids."""
        successes, attempts = successes.double().flatten(), attempts.double().flatten()
        if not len(prompt_ids) == len(successes) == len(attempts):
            raise ValueError(f"got {len(prompt_ids)} ids, {len(successes)} successes, {len(attempts)} attempts")
        if tags is not None and len(tags) != len(prompt_ids):
            raise ValueError(f"got {len(tags)} tags for {len(prompt_ids)} prompts")
        if (successes < 0).any() or (successes > attempts).any():
            raise ValueError("need 0 <= successes <= attempts")
        rows = self._rows(prompt_ids)  # (P,) -1: a new prompt, given the next row in order of first appearance
        fresh = (rows < 0).nonzero().flatten().tolist()
        if fresh:
            for i in fresh:
                self._index.setdefault(prompt_ids[i], len(self._index))
            rows = rows.clone()
            rows[fresh] = torch.tensor([self._index[prompt_ids[i]] for i in fresh], dtype=torch.long)
            self._looked_up = (list(prompt_ids), rows)
            self._remember_keys(prompt_ids, rows)
        grow = len(self._index) - len(self._attempts)
        zeros = torch.zeros(grow, dtype=torch.float64)
        self._successes = torch.cat([self._successes * self.decay, zeros])
        self._attempts = torch.cat([self._attempts * self.decay, zeros])
        self._total_attempts = torch.cat([self._total_attempts, zeros])
        self._tag_of = torch.cat([self._tag_of, torch.full((grow,), -1, dtype=torch.long)])
        self._successes.index_add_(0, rows, successes)
        self._attempts.index_add_(0, rows, attempts)
        self._total_attempts.index_add_(0, rows, attempts)
        if tags is not None:
            for tag in dict.fromkeys(tags):  # the few distinct tags, in order of first appearance
                self._tag_index.setdefault(tag, len(self._tag_index))
            self._tag_of[rows] = torch.tensor(list(map(self._tag_index.__getitem__, tags)), dtype=torch.long)

    def history(self, prompt_ids: list[str]) -> tuple[Tensor, Tensor]:
        """Lifetime (decayed) (successes (P,), attempts (P,)) float64; zeros for unseen prompts."""
        rows = self._rows(prompt_ids)
        return self._gather(self._successes, rows), self._gather(self._attempts, rows)

    def _rows(self, prompt_ids: list[str]) -> Tensor:
        """(P,) long rows of the ids, -1: unseen. Shared with the cache: read, do not write."""
        if self._looked_up is not None and self._looked_up[0] == prompt_ids:  # C-speed: the same string objects
            return self._looked_up[1]
        keys = getattr(prompt_ids, "keys", None)
        if keys is not None and prompt_ids.pool is self._key_pool and len(keys) and int(keys.max()) < len(self._key_rows):
            rows = self._key_rows.index_select(0, keys)  # one gather; the dict only for keys not resolved yet (none, once the pool is seen)
            missing = (rows < 0).nonzero().flatten()
            if len(missing):
                rows[missing] = torch.tensor([self._index.get(prompt_ids[i], -1) for i in missing.tolist()], dtype=torch.long)
                self._remember_keys(prompt_ids, rows)
        else:
            rows = torch.tensor([self._index.get(pid, -1) for pid in prompt_ids], dtype=torch.long)
            self._remember_keys(prompt_ids, rows)
        self._looked_up = (list(prompt_ids), rows)
        return rows

    def _remember_keys(self, prompt_ids: list[str], rows: Tensor) -> None:
        """Store the resolved rows of a PromptIds' keys (a new pool replaces the old one's)."""
        keys = getattr(prompt_ids, "keys", None)
        if keys is None or not len(keys):
            return
        if prompt_ids.pool is not self._key_pool:
            self._key_pool, self._key_rows = prompt_ids.pool, torch.zeros(0, dtype=torch.long)
        size = int(keys.max()) + 1
        if size > len(self._key_rows):
            self._key_rows = torch.cat([self._key_rows, torch.full((size - len(self._key_rows),), -1, dtype=torch.long)])
        seen = rows >= 0
        self._key_rows[keys[seen]] = rows[seen]

    @staticmethod
    def _gather(values: Tensor, rows: Tensor, missing: float = 0) -> Tensor:
        """values[rows], `missing` where rows == -1 (unseen prompts)."""
        if len(rows) and int(rows.min()) >= 0:  # every prompt seen (each step once the pool has been visited)
            return values.index_select(0, rows)  # 6x faster than values[rows] for 10^6 random rows on CPU
        seen = rows >= 0
        out = torch.full((len(rows),), missing, dtype=values.dtype)
        out[seen] = values.index_select(0, rows[seen])
        return out

    def _coverage(self, rows: Tensor) -> float:
        """alloc/history_coverage: share of the prompts with >= explore_min_attempts undecayed attempts."""
        return float((self._gather(self._total_attempts, rows) >= self.explore_min_attempts).double().mean())

    def state_dict(self) -> dict:
        """Plain python types (str / float / int lists), saveable with torch.save or json. Tag pools are
        recomputed from these per-prompt rows at every allocate, so a resumed run pools exactly the same."""
        return {
            "prompt_ids": list(self._index),
            "successes": self._successes.tolist(),
            "attempts": self._attempts.tolist(),
            "total_attempts": self._total_attempts.tolist(),
            "tags": list(self._tag_index),
            "tag_of": self._tag_of.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        ids = list(state["prompt_ids"])
        if "total_attempts" not in state:  # a checkpoint from before undecayed counts and tags: exact when decay = 1
            state = {**state, "total_attempts": state["attempts"], "tags": [], "tag_of": [-1] * len(ids)}
        columns = ("successes", "attempts", "total_attempts", "tag_of")
        if any(len(state[c]) != len(ids) for c in columns):
            raise ValueError(f"allocator state: prompt_ids and {', '.join(columns)} differ in length")
        self._index = {pid: i for i, pid in enumerate(ids)}
        self._looked_up, self._key_pool, self._key_rows = None, None, torch.zeros(0, dtype=torch.long)
        self._tag_index = {tag: i for i, tag in enumerate(state["tags"])}
        self._successes = torch.tensor(state["successes"], dtype=torch.float64)
        self._attempts = torch.tensor(state["attempts"], dtype=torch.float64)
        self._total_attempts = torch.tensor(state["total_attempts"], dtype=torch.float64)
        self._tag_of = torch.tensor(state["tag_of"], dtype=torch.long)


class VarianceAllocator(UniformAllocator):
    """DynaMO's variance-based allocator: B = n P rollouts split by `variance_priority` + `allocate_rollouts`.

    prior="none" is the paper: a prompt with fewer than g0 = explore_min_attempts (undecayed) attempts gets
    the fixed `unexplored_priority`. prior="tag" (beyond the paper) gives every prompt its tag's pooled
    statistics as `prior_strength` pseudo-observations (`tag_pool`, `shrunk_estimates`), so an unexplored
    prompt starts from its tag's variance and its own evidence takes over as it accumulates. Either way a
    prompt short of g0 attempts is topped up by the rollouts it still needs (`exploration_need`).
    """

    def __init__(
        self,
        *,
        n: int,
        n_min: int,
        n_max: int,
        explore_min_attempts: int,
        mastered_threshold: float,
        floor: float,
        unexplored_priority: float,
        weight: str,
        decay: float,
        prior: str,
        prior_strength: float,
    ):
        super().__init__(n=n, explore_min_attempts=explore_min_attempts, decay=decay)
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        self.n_min, self.n_max, self.mastered_threshold = n_min, n_max, mastered_threshold
        self.floor, self.unexplored_priority, self.weight = floor, unexplored_priority, weight
        self.prior_strength = prior_strength if prior == "tag" else 0.0  # prior="none" is m = 0

    def allocate(self, prompt_ids: list[str], *, tags: list[str] | None = None) -> Allocation:
        if not prompt_ids:
            raise ValueError("allocate needs at least one prompt")
        rows = self._rows(prompt_ids)  # (P,)
        successes, attempts = self._gather(self._successes, rows), self._gather(self._attempts, rows)  # (P,), (P,)
        total = self._gather(self._total_attempts, rows)  # (P,) undecayed
        explored = total >= self.explore_min_attempts  # (P,)
        prior_rate, prior_variance, strength = self._prior(rows, tags)  # (P,) each
        acc, variance = shrunk_estimates(successes=successes, attempts=attempts, prior_rate=prior_rate,
                                         prior_variance=prior_variance, prior_strength=strength)
        unknown = ~explored & (strength == 0)
        priority = variance_priority(acc=acc, variance=variance, unknown=unknown, mastered_threshold=self.mastered_threshold,
                                     floor=self.floor, unexplored_priority=self.unexplored_priority, weight=self.weight)
        need = exploration_need(attempts=total, explore_min_attempts=self.explore_min_attempts)
        counts = allocate_rollouts(priority=priority, explore_need=need, budget=self.n * len(prompt_ids),
                                   n_min=self.n_min, n_max=self.n_max)
        mastered = ~unknown & (acc >= self.mastered_threshold)
        metrics = _count_metrics(counts) | {
            "alloc/history_coverage": float(explored.double().mean()),
            "alloc/unexplored_frac": float((~explored).double().mean()),
            "alloc/mastered_frac": float(mastered.double().mean()),
            # weight of the tag's pseudo-observations in the success rates, m / (G + m): 0 without a prior
            "alloc/prior_weight": float((strength / (attempts + strength).clamp(min=1e-12)).mean()),
        }
        return Allocation(counts=counts, priority=priority, metrics=metrics)

    def update(self, prompt_ids: list[str], *, successes: Tensor, attempts: Tensor, tags: list[str] | None = None) -> None:
        if self.prior_strength and tags is None:
            raise ValueError("prior=tag needs update(..., tags=[...]) aligned with prompt_ids")
        super().update(prompt_ids, successes=successes, attempts=attempts, tags=tags)

    def _prior(self, rows: Tensor, tags: list[str] | None) -> tuple[Tensor, Tensor, Tensor]:
        """(p_tag, V_tag, m) per prompt; m = 0 without a prior or where the tag has no evidence yet."""
        zeros = torch.zeros(len(rows), dtype=torch.float64)
        if not self.prior_strength:
            return zeros, zeros, zeros
        if tags is None or len(tags) != len(rows):
            raise ValueError("prior=tag needs allocate(..., tags=[...]) aligned with prompt_ids")
        if not self._tag_index:  # no tagged history yet: nothing to lend
            return zeros, zeros, zeros
        tag_ids = self._gather(self._tag_of, rows, missing=-1)  # (P,) stored tags; look up only the rest
        missing = (tag_ids < 0).nonzero().flatten().tolist()  # unseen (or stored untagged) prompts only
        tag_ids[missing] = torch.tensor([self._tag_index.get(tags[i], -1) for i in missing], dtype=torch.long)
        pool = tag_pool(successes=self._successes, attempts=self._attempts, tag_ids=self._tag_of,
                        num_tags=len(self._tag_index))
        ids = tag_ids.clamp(min=0)
        lends = (tag_ids >= 0) & pool.has_evidence[ids]  # (P,)
        strength = torch.where(lends, torch.full_like(zeros, self.prior_strength), zeros)
        return torch.where(lends, pool.rate[ids], zeros), torch.where(lends, pool.variance[ids], zeros), strength
