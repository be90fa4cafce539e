"""sampler=curriculum: the pool ordered easy -> hard, of which a growing share is unlocked (the pacing function of
Hacohen & Weinshall 2019, "On the Power of Curriculum Learning"); each step draws its prompts at random from the
unlocked share. `order=tag` ranks by the task's difficulty tags (levels), `order=success` by each prompt's running
success rate (online: the ranking moves as the policy learns; prompts without history rank by tag). Fresh prompts
(`more`) continue the step's draw within the unlocked share.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from dynamo_cli.allocation.maths import laplace_rate  # the running success rate order=success ranks by
from dynamo_cli.config.base import GroupConfig, check, one_of, positive
from dynamo_cli.errors import DynamoError
from dynamo_cli.sampling.base import SAMPLERS, permutation_stream

PACINGS = ("linear", "step")
ORDERS = ("tag", "success")


@dataclass
class CurriculumSamplerConfig(GroupConfig):
    """Easy -> hard with a pacing schedule (sampling/samplers.py; Hacohen & Weinshall 2019): each step draws at random from
    the unlocked share of the ordered pool, which grows from `start` to 1 over `pace_steps` steps."""

    name: str = "curriculum"
    order: str = "tag"  # tag (the task's difficulty tags, e.g. L3 < L4 < L5) | success (running success rate, online)
    pacing: str = "linear"  # linear | step (the same ramp in `stages` equal jumps)
    start: float = 0.34  # share unlocked at step 1 (0.34 of the default L3-L5 pool is L3 and a few L4)
    pace_steps: Optional[int] = None  # steps until the whole pool is unlocked (0: at once); null: half of trainer.steps
    stages: int = 3  # jumps of pacing=step (3: one per default level)
    tag_order: Optional[list[str]] = None  # tags easy -> hard; null: natural sort of the tags (L1 < L2 < ... < L10)

    def __post_init__(self) -> None:
        one_of("sampler.order", self.order, ORDERS)
        one_of("sampler.pacing", self.pacing, PACINGS)
        check(0 < self.start <= 1, f"sampler.start={self.start} must be in (0, 1]")
        if self.pace_steps is not None:
            positive("sampler.pace_steps", self.pace_steps, strict=False)
        positive("sampler.stages", self.stages)


def unlocked_share(step: int, *, start: float, pace_steps: int, pacing: str, stages: int) -> float:
    """Share of the easy -> hard ordered pool a curriculum draws from at `step` (1-based).

    linear: start at step 1, growing linearly to 1 at step pace_steps + 1:  start + (1 - start) · min(1, (step - 1) / pace_steps).
    step:   the same ramp in `stages` equal jumps (a "baby steps" curriculum): start + (1 - start) · ⌊stages · q⌋ / stages,
            q = min(1, (step - 1) / pace_steps), so the share is start for the first pace_steps / stages steps.
    pace_steps = 0: the whole pool from step 1 (no curriculum)."""
    if pacing not in PACINGS:
        raise ValueError(f"pacing must be one of {PACINGS}, got {pacing!r}")
    progress = 1.0 if pace_steps == 0 else min(1.0, (step - 1) / pace_steps)
    if pacing == "step":
        progress = math.floor(stages * progress + 1e-9) / stages
    return start + (1.0 - start) * progress


def natural_key(tag: str) -> tuple:
    """'L10' after 'L9', 'Level 2' before 'Level 10': digit runs compare as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", tag) if part)


def tag_ranks(tags: list[str], *, order: list[str] | None) -> Tensor:
    """Difficulty rank of each prompt's tag, 0 = easiest: its position in `order` (easy -> hard), or, with
    order=None, in the natural sort of the distinct tags. Returns (N,) long."""
    ranking = list(order) if order is not None else sorted(set(tags), key=natural_key)
    position = {tag: i for i, tag in enumerate(ranking)}
    missing = sorted(set(tags) - set(position))
    if missing:
        raise ValueError(f"tags {missing} are not in the curriculum's tag order {ranking}")
    return torch.tensor([position[t] for t in tags], dtype=torch.long)


def success_order_rates(*, successes: Tensor, attempts: Tensor, tag_rank: Tensor) -> Tensor:
    """order=success's sort key: a prompt with rollouts its running rate (k+1)/(G+2); an unseen one its tag's, the
    Laplace rate of the tag's pooled counts, so it ranks among the seen prompts of its level; an unseen one whose tag
    has no rollouts yet -1, after every rate (then the tag order and the tie-break rank them). Without any rollouts the
    order is the tag order. (Every unseen prompt at 0.5 put the hard levels' unseen prompts above any seen prompt solved
    less than half the time.) successes, attempts (N,) float64; tag_rank (N,) long. Returns (N,) float64."""
    seen = attempts > 0
    tags = int(tag_rank.max()) + 1 if len(tag_rank) else 0
    tag_k = torch.zeros(tags, dtype=torch.float64).index_add_(0, tag_rank, successes.double())
    tag_g = torch.zeros(tags, dtype=torch.float64).index_add_(0, tag_rank, attempts.double())
    tag_rate = torch.where(tag_g > 0, laplace_rate(successes=tag_k, attempts=tag_g), -1.0)  # (T,)
    return torch.where(seen, laplace_rate(successes=successes, attempts=attempts), tag_rate[tag_rank])


def curriculum_order(*, tag_rank: Tensor, tie_break: Tensor, success_rate: Tensor | None = None) -> Tensor:
    """Indices of the pool, easiest first. Sort keys, most significant first: the success rate (descending;
    only for the online order), the tag rank (ascending), then `tie_break` (a seeded random permutation rank,
    so prompts of one level come in a fixed random order). Returns (N,) long."""
    order = torch.argsort(tie_break, stable=True)
    order = order[torch.argsort(tag_rank[order], stable=True)]
    if success_rate is not None:
        order = order[torch.argsort(-success_rate.double()[order], stable=True)]
    return order


@SAMPLERS.register("curriculum", schema=CurriculumSamplerConfig)
class CurriculumSampler:
    """Easy -> hard over the prompt pool (see the module docstring). Step s draws per_step prompts at random
    (without replacement while it can) from the first max(per_step, ⌈share(s) · N⌉) prompts of the order.

    The draw is a pure function of (seed, step, the order); with order=success the order is a function of the
    per-prompt success counts, which `update` accumulates and `state_dict` saves, so a resume is exact."""

    def __init__(self, *, problems: list, seed: int, order: str, pacing: str, start: float, pace_steps: int | None, stages: int,
                 tag_order: list[str] | None, steps: int):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        tags = {p.level for p in problems}
        if order == "tag" and len(tags) < 2:
            raise DynamoError(f"sampler.order=tag needs at least two difficulty tags; the task's problems have {sorted(tags)}: "
                              "choose sampler.order=success")
        if tag_order is not None and tags - set(tag_order):
            raise DynamoError(f"sampler.tag_order={list(tag_order)} misses the task's tags {sorted(tags - set(tag_order))}")
        self.seed, self.order, self.pacing = seed, order, pacing
        self.start, self.stages = start, stages
        self.pace_steps = steps // 2 if pace_steps is None else pace_steps  # steps: the run's trainer.steps
        self.ids = [p.id for p in problems]
        self._row = {pid: i for i, pid in enumerate(self.ids)}
        self.tag_rank = tag_ranks([p.level for p in problems], order=None if tag_order is None else list(tag_order))  # (N,)
        self.tie_break = torch.argsort(torch.randperm(len(problems), generator=torch.Generator().manual_seed(seed)))  # (N,)
        self.successes = torch.zeros(len(problems), dtype=torch.float64)  # (N,) running counts (order=success)
        self.attempts = torch.zeros(len(problems), dtype=torch.float64)
        self._unlocked: Tensor = torch.zeros(0, dtype=torch.long)  # the current step's unlocked prompts, in draw order
        self._cursor = 0

    def ordering(self) -> Tensor:
        """The pool's indices, easiest first, as the next step would see them."""
        rate = (success_order_rates(successes=self.successes, attempts=self.attempts, tag_rank=self.tag_rank)
                if self.order == "success" else None)
        return curriculum_order(tag_rank=self.tag_rank, tie_break=self.tie_break, success_rate=rate)

    def unlocked(self, step: int, *, per_step: int) -> int:
        """How many of the ordered prompts step `step` may draw from."""
        share = unlocked_share(step, start=self.start, pace_steps=self.pace_steps, pacing=self.pacing, stages=self.stages)
        return min(len(self.ids), max(per_step, math.ceil(share * len(self.ids) - 1e-9)))

    def prompt_indices(self, step: int, *, num_problems: int, per_step: int) -> list[int]:
        if num_problems != len(self.ids):
            raise ValueError(f"the curriculum was built over {len(self.ids)} problems, asked for {num_problems}")
        self._unlocked = self.ordering()[: self.unlocked(step, per_step=per_step)]
        self._step_seed, self._cursor = self.seed * 1_000_003 + step, 0
        return self.more(step, num_problems=num_problems, count=per_step)

    def more(self, step: int, *, num_problems: int, count: int) -> list[int]:
        picks = permutation_stream(self._cursor, count, num_problems=len(self._unlocked), seed=self._step_seed)
        self._cursor += count
        return self._unlocked[picks].tolist()

    def update(self, prompt_ids: list[str], *, rewards: Tensor, group_index: Tensor) -> None:
        """Accumulate each drawn prompt's successes (reward > 0) and attempts."""
        rows = torch.tensor([self._row[pid] for pid in prompt_ids], dtype=torch.long)[group_index]  # (B,) pool row of each rollout
        self.successes.index_add_(0, rows, (rewards > 0).double())
        self.attempts.index_add_(0, rows, torch.ones(len(rows), dtype=torch.float64))

    def state_dict(self) -> dict:
        return {"prompt_ids": list(self.ids), "successes": self.successes.tolist(), "attempts": self.attempts.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("prompt_ids") != self.ids:
            raise ValueError("sampler state: the checkpoint's curriculum was built over a different prompt pool")
        self.successes = torch.tensor(state["successes"], dtype=torch.float64)
        self.attempts = torch.tensor(state["attempts"], dtype=torch.float64)
