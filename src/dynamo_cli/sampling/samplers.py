"""Samplers: which training problems a step draws (the `sampler` config group; protocols.Sampler).

uniform: consecutive slices of per-epoch permutations, a pure function of (step, seed, fresh prompts drawn
before), so a resume needs no data-loader state beyond that count.

curriculum: the pool ordered easy -> hard, of which a growing share is unlocked (the pacing function of
Hacohen & Weinshall 2019, "On the Power of Curriculum Learning"); each step draws its prompts at random from
the unlocked share. `order=tag` ranks by the task's difficulty tags (levels), `order=success` by each prompt's
running success rate (online: the ranking moves as the policy learns; prompts without history rank by tag).

`more(step, count)`: fresh prompts for the same step (a round allocator such as DAPO's dynamic sampling asks
for them after seeing the first round's rewards); they continue the step's draw, so no prompt repeats within
a step while the pool (uniform) or the unlocked share (curriculum) has unused prompts.
"""
from __future__ import annotations

import math
import re

import torch
from torch import Tensor

PACINGS = ("linear", "step")
ORDERS = ("tag", "success")


# ----------------------------------------------------------------------------------------------------
# pure functions


def permutation_stream(first: int, count: int, *, num_problems: int, seed: int) -> list[int]:
    """Positions [first, first + count) of an endless stream of per-epoch permutations of range(num_problems),
    epoch e shuffled by a generator seeded with seed * 100_003 + e."""
    permutations: dict[int, torch.Tensor] = {}
    indices = []
    for position in range(first, first + count):
        epoch, offset = divmod(position, num_problems)
        if epoch not in permutations:
            permutations[epoch] = torch.randperm(num_problems, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        indices.append(int(permutations[epoch][offset]))
    return indices


def step_prompt_indices(step: int, *, num_problems: int, per_step: int, seed: int) -> list[int]:
    """The training problems of `step` (1-based): consecutive slices of per-epoch permutations."""
    return permutation_stream((step - 1) * per_step, per_step, num_problems=num_problems, seed=seed)


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


def curriculum_order(*, tag_rank: Tensor, tie_break: Tensor, success_rate: Tensor | None = None) -> Tensor:
    """Indices of the pool, easiest first. Sort keys, most significant first: the success rate (descending;
    only for the online order), the tag rank (ascending), then `tie_break` (a seeded random permutation rank,
    so prompts of one level come in a fixed random order). Returns (N,) long."""
    order = torch.argsort(tie_break, stable=True)
    order = order[torch.argsort(tag_rank[order], stable=True)]
    if success_rate is not None:
        order = order[torch.argsort(-success_rate.double()[order], stable=True)]
    return order


def laplace_rate(*, successes: Tensor, attempts: Tensor) -> Tensor:
    """(k + 1) / (G + 2): the running success rate with one pseudo-success and one pseudo-failure, so an unseen
    prompt sits at 0.5 (between the prompts it is solved on and those it is not) and one lucky rollout does not
    rank a prompt as easiest. Returns float64 (N,)."""
    return (successes.double() + 1) / (attempts.double() + 2)


# ----------------------------------------------------------------------------------------------------
# samplers


class UniformSampler:
    """Every problem once per epoch, in an order fixed by the run's seed. Fresh prompts (`more`) continue the
    stream, and every later step starts after them (`extra`: how many were drawn; the checkpointed state)."""

    def __init__(self, *, seed: int):
        self.seed = seed
        self.extra = 0  # fresh prompts drawn by `more` before the current position
        self._cursor = 0  # stream position of the next fresh prompt of the current step

    def prompt_indices(self, step: int, *, num_problems: int, per_step: int) -> list[int]:
        first = (step - 1) * per_step + self.extra
        self._cursor = first + per_step
        return permutation_stream(first, per_step, num_problems=num_problems, seed=self.seed)

    def more(self, step: int, *, num_problems: int, count: int) -> list[int]:
        indices = permutation_stream(self._cursor, count, num_problems=num_problems, seed=self.seed)
        self._cursor, self.extra = self._cursor + count, self.extra + count
        return indices

    def update(self, prompt_ids: list[str], *, rewards: Tensor, group_index: Tensor) -> None:
        """Nothing to learn: the order is fixed."""

    def state_dict(self) -> dict:
        return {"extra": self.extra}

    def load_state_dict(self, state: dict) -> None:
        self.extra = state.get("extra", 0)  # checkpoints from before fresh prompts hold {}


class CurriculumSampler:
    """Easy -> hard over the prompt pool (see the module docstring). Step s draws per_step prompts at random
    (without replacement while it can) from the first max(per_step, ⌈share(s) · N⌉) prompts of the order.

    The draw is a pure function of (seed, step, the order); with order=success the order is a function of the
    per-prompt success counts, which `update` accumulates and `state_dict` saves, so a resume is exact."""

    def __init__(self, *, problems: list, seed: int, order: str, pacing: str, start: float, pace_steps: int, stages: int,
                 tag_order: list[str] | None):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        self.seed, self.order, self.pacing = seed, order, pacing
        self.start, self.pace_steps, self.stages = start, pace_steps, stages
        self.ids = [p.id for p in problems]
        self._row = {pid: i for i, pid in enumerate(self.ids)}
        self.tag_rank = tag_ranks([p.level for p in problems], order=tag_order)  # (N,)
        self.tie_break = torch.argsort(torch.randperm(len(problems), generator=torch.Generator().manual_seed(seed)))  # (N,)
        self.successes = torch.zeros(len(problems), dtype=torch.float64)  # (N,) running counts (order=success)
        self.attempts = torch.zeros(len(problems), dtype=torch.float64)
        self._unlocked: Tensor = torch.zeros(0, dtype=torch.long)  # the current step's unlocked prompts, in draw order
        self._cursor = 0

    def ordering(self) -> Tensor:
        """The pool's indices, easiest first, as the next step would see them."""
        rate = laplace_rate(successes=self.successes, attempts=self.attempts) if self.order == "success" else None
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
