"""What every allocator shares: the `allocator` group's registry, the fields of every allocator schema, the
Allocation an allocator returns, and the per-prompt success history every allocator keeps and checkpoints.

Why a history: the summed variance of per-prompt gradient estimates, sum_i sigma_i^2 / n_i with sum_i n_i = B, is
minimised by n_i ∝ sigma_i (Neyman allocation), and the paper's proxy for sigma_i^2 is the Bernoulli variance of the
prompt's 0/1 success history (DynaMO Part 1, arXiv 2602.19208; docs/algorithm.md "Part 1"). The baselines read the
same history (Knapsack RL: its success rate) and log it (alloc/history_coverage). Every hyperparameter is a required
keyword of the classes: its default and its check live in the schema, once.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import Optional

import numpy as np
import torch
from omegaconf import MISSING
from torch import Tensor

from dynamo_cli.config.base import GroupConfig, check
from dynamo_cli.registry import Registry

ALLOCATORS = Registry("allocator")


@dataclass
class AllocatorConfig(GroupConfig):
    """What every allocator keeps: each prompt's success history (docs/algorithm.md, "Our choices")."""

    name: str = MISSING
    explore_min_attempts: int = 4  # g0: prompts with fewer (undecayed) lifetime attempts are 'unexplored'
    decay: float = 1.0  # per-step multiplicative decay of the success history; 1.0 = cumulative

    def __post_init__(self) -> None:
        check(self.explore_min_attempts >= 0, f"allocator.explore_min_attempts={self.explore_min_attempts} must be >= 0")
        check(0 < self.decay <= 1, f"allocator.decay={self.decay} must be in (0, 1]")


class RolloutBounds:
    """Mixin of the schemas with per-prompt bounds `n_min`, `n_max` (variance, knapsack; each declares the two
    fields with its own defaults): n_min >= 1, n_min <= n_max, and rollout.n within them, since outside them the step's
    budget n P would be clipped to n_min P or n_max P and the run would spend another budget than it says."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.n_min >= 1, f"allocator.n_min={self.n_min} must be >= 1")
        check(self.n_min <= self.n_max, f"allocator.n_min={self.n_min} must be <= allocator.n_max={self.n_max}")

    def check_run(self, run) -> None:
        super().check_run(run)
        a, n = self, run.rollout.n
        check(a.n_min <= n <= a.n_max, f"rollout.n={n} must lie in [allocator.n_min, allocator.n_max] = [{a.n_min}, {a.n_max}]")


@dataclass
class Allocation:
    counts: Tensor  # (P,) long, rollouts per prompt, sum == budget
    priority: Tensor  # (P,) informativeness used (uniform: ones)
    metrics: dict[str, float] = field(default_factory=dict)  # alloc/...
    # rounds (protocols.RoundAllocator): a round allocation may ask for `fresh` new prompts from the sampler (which
    # `allocate` then splits rollouts among), and the round that ends the step may name the groups that enter the loss
    fresh: int = 0
    keep: Optional[Tensor] = None  # (P,) bool over the step's prompts so far; None: every group


def count_metrics(counts: Tensor) -> dict[str, float]:
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


class HistoryAllocator(ABC):
    """Each prompt's success history, which every allocator keeps (for its decisions, logs, the live table and the
    alloc/history_coverage metric) and saves in checkpoints; subclasses implement `allocate`.

    History is keyed by the stable prompt id string. `update` first multiplies *all* stored (successes,
    attempts) by `decay` (per call, i.e. per training step, not per visit of that prompt), then adds this
    step's counts; decay = 1.0 keeps the cumulative history of the reference code. Alongside, each prompt keeps
    its *undecayed* attempt count (exploration status and coverage, docs/algorithm.md "Our choices" (c)) and
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
        # ids, so only the first pays the per-id dict lookup (the one Python loop over prompts, ~1 µs an id in a
        # history of 10^6). Rows never move once assigned, so it stays valid until an id is added or the state loaded.
        self._looked_up: tuple[list[str], Tensor] | None = None

    @abstractmethod
    def allocate(self, prompt_ids: list[str], *, tags: list[str] | None = None) -> Allocation:
        """(P,) counts for the step's prompts: each allocator's own rule over the shared history."""

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
        grow = len(self._index) - len(self._attempts)
        if self.decay != 1:
            self._successes.mul_(self.decay)
            self._attempts.mul_(self.decay)
        if grow:  # only a step with new prompts copies the history
            zeros = torch.zeros(grow, dtype=torch.float64)
            self._successes = torch.cat([self._successes, zeros])
            self._attempts = torch.cat([self._attempts, zeros])
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
        ids = list(prompt_ids)
        try:  # every id stored (each step once the pool was visited): one C loop of lookups, half the time of map(get)
            found = itemgetter(*ids)(self._index) if len(ids) > 1 else [self._index[pid] for pid in ids]
        except KeyError:  # unseen ids: -1
            found = list(map(self._index.get, ids, repeat(-1)))
        rows = torch.from_numpy(np.array(found, dtype=np.int64))  # numpy reads a tuple of ints at twice torch's speed
        self._looked_up = (ids, rows)
        return rows

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
        self._looked_up = None
        self._tag_index = {tag: i for i, tag in enumerate(state["tags"])}
        self._successes = torch.tensor(state["successes"], dtype=torch.float64)
        self._attempts = torch.tensor(state["attempts"], dtype=torch.float64)
        self._total_attempts = torch.tensor(state["total_attempts"], dtype=torch.float64)
        self._tag_of = torch.tensor(state["tag_of"], dtype=torch.long)
