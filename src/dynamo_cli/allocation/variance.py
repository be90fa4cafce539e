"""allocator=variance, DynaMO's allocation (Part 1, arXiv 2602.19208; docs/algorithm.md "Part 1"): the step's budget
B = n P split in proportion to each prompt's informativeness, its Bernoulli variance P_i = k (G - k) / (G (G - 1)).

Why: the summed variance of per-prompt gradient estimates, sum_i sigma_i^2 / n_i with sum_i n_i = B, is minimised by
n_i ∝ sigma_i (Neyman allocation); weight=variance follows the reference code (n_i ∝ sigma_i^2), weight=std the
Neyman optimum. Pure pieces first -- (success history, budget, bounds) -> rollouts per prompt -- then the class.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dynamo_cli.allocation.base import ALLOCATORS, Allocation, AllocatorConfig, HistoryAllocator, RolloutBounds, count_metrics
from dynamo_cli.allocation.maths import exploration_need, uniform_rollouts, water_fill
from dynamo_cli.config.base import check, one_of, positive

WEIGHTS = ("variance", "std")  # allocator.weight: n_i ∝ P_i (the reference) | n_i ∝ sqrt(P_i) (Neyman)
PRIORS = ("none", "tag")  # allocator.prior: none (the paper) | tag (pool the statistics of the prompt's tag)
TIE_BREAK = 1e-6  # P + 1e-6 (1 - acc): among equal variances the harder prompt wins (the reference's term)


@dataclass
class VarianceAllocatorConfig(RolloutBounds, AllocatorConfig):
    """DynaMO allocation: rollouts in proportion to each prompt's Bernoulli variance (docs/algorithm.md, Part 1)."""

    name: str = "variance"
    n_min: int = 2  # fewest rollouts a prompt gets in a step
    n_max: int = 16  # most rollouts a prompt gets in a step
    mastered_threshold: float = 0.85  # success rate at which a prompt counts as mastered (gets the floor)
    floor: float = 0.01  # smallest final weight, for mastered and never-solved prompts (std: after the sqrt)
    unexplored_priority: float = 0.25  # variance assumed for unexplored prompts without a prior (max p(1-p))
    weight: str = "variance"  # variance (the reference, ∝ P_i) | std (Neyman optimum, ∝ sqrt(P_i))
    prior: str = "none"  # none (the paper: unexplored = unexplored_priority) | tag (pool by the prompt's level)
    prior_strength: float = 4.0  # m: pseudo-attempts (rate) and pseudo-dof (variance) a prompt borrows from its tag

    def __post_init__(self) -> None:
        super().__post_init__()  # RolloutBounds: n_min >= 1, n_min <= n_max
        check(0 < self.mastered_threshold <= 1, f"allocator.mastered_threshold={self.mastered_threshold} must be in (0, 1]")
        positive("allocator.floor", self.floor)
        positive("allocator.unexplored_priority", self.unexplored_priority)
        one_of("allocator.weight", self.weight, WEIGHTS)
        one_of("allocator.prior", self.prior, PRIORS)
        positive("allocator.prior_strength", self.prior_strength)


# ----------------------------------------------------------------------------------------------------
# pure functions


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
    sums: tuple[Tensor, Tensor, Tensor, Tensor]  # (Σ k, Σ G, Σ SS, Σ dof): what `prior_without_self` subtracts from


def tag_pool(*, successes: Tensor, attempts: Tensor, tag_ids: Tensor, num_tags: int) -> TagPool:
    """Pool prompts by tag (tag_ids (N,) long in [0, num_tags), -1 = untagged and left out); vectorised.

    The variance pools sums of squares, not rates: a tag whose prompts are each always or never solved has
    rate .5 but within-prompt variance 0, and 0 is what a new prompt of that tag most likely has.
    """
    k, g = successes.double(), attempts.double()  # (N,), (N,)
    ss, dof = sum_of_squares(successes=k, attempts=g)
    bins = torch.where(tag_ids >= 0, tag_ids, num_tags)  # untagged rows go to an extra bin, dropped below
    tk, tg, tss, tdof = (torch.bincount(bins, weights=v, minlength=num_tags + 1)[:num_tags] for v in (k, g, ss, dof))
    return TagPool(rate=tk / tg.clamp(min=1e-12), variance=tss / tdof.clamp(min=1e-12), has_evidence=tdof > 0,
                   sums=(tk, tg, tss, tdof))


def prior_without_self(*, pool: TagPool, tag_ids: Tensor, own_successes: Tensor, own_attempts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each prompt's tag prior from the *other* prompts of its tag: the pooled sums minus the prompt's own (k, G, SS,
    dof), which the pool holds when the prompt is stored under that tag. Otherwise a prompt's evidence enters its
    estimate twice, once as itself and once through m pseudo-observations of a pool it is part of: a tag of one prompt
    would lend that prompt its own rate. tag_ids (P,) long (-1: untagged); own_* (P,) the prompt's stored (decayed)
    statistics (0 for a prompt not stored). Returns (p_tag (P,), V_tag (P,), lends (P,) bool: the rest has Σ dof > 0)."""
    ids = tag_ids.clamp(min=0)
    own_ss, own_dof = sum_of_squares(successes=own_successes, attempts=own_attempts)
    tk, tg, tss, tdof = (total[ids] - own for total, own in zip(pool.sums, (own_successes.double(), own_attempts.double(),
                                                                             own_ss, own_dof), strict=True))
    lends = (tag_ids >= 0) & (tdof > 1e-9)  # the sums are float64 of decayed counts: a rest of 0 may round to ±1e-16
    return tk / tg.clamp(min=1e-12), tss / tdof.clamp(min=1e-12), lends


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
    """Informativeness of each prompt (docs/algorithm.md, "Reference-code behaviour"), from `shrunk_estimates`.

    - unknown (unexplored, nothing borrowed): `unexplored_priority`, a variance. Our choice: 0.25 is the
      largest p (1 - p), i.e. nothing known -> maximal uncertainty.
    - acc >= mastered_threshold: `floor` (mastered prompts teach little).
    - otherwise max(w(P + 1e-6 (1 - acc)), floor); the 1e-6 term breaks ties towards harder prompts and
      never-solved prompts (P = 0) land on the floor.
    w is the identity (weight="variance", the reference's n_i ∝ sigma_i^2) or sqrt (weight="std", Neyman's
    n_i ∝ sigma_i), applied to the variances (unexplored_priority included) *before* the floor, so `floor`
    is the smallest final weight in both modes (docs/algorithm.md, "Our choices" (b)).
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


def allocate_rollouts(*, priority: Tensor, explore_need: Tensor, budget: int, n_min: int, n_max: int) -> Tensor:
    """Rollouts per prompt: n_min <= n_i <= n_max and sum == budget clipped to [n_min P, n_max P].

    Our fill order (docs/algorithm.md, "Our choices"): (1) every prompt gets n_min; (2) prompts short of g0 attempts
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
# the allocator


@ALLOCATORS.register("variance", schema=VarianceAllocatorConfig)
class VarianceAllocator(HistoryAllocator):
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
        metrics = count_metrics(counts) | {
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
        # a stored prompt is in its tag's pool: it borrows from the others only (an unseen one's own statistics are 0)
        stored = self._gather(self._tag_of, rows, missing=-1) >= 0
        own_k = torch.where(stored, self._gather(self._successes, rows), 0.0)
        own_g = torch.where(stored, self._gather(self._attempts, rows), 0.0)
        rate, variance, lends = prior_without_self(pool=pool, tag_ids=tag_ids, own_successes=own_k, own_attempts=own_g)
        strength = torch.where(lends, torch.full_like(zeros, self.prior_strength), zeros)
        return torch.where(lends, rate, zeros), torch.where(lends, variance, zeros), strength
