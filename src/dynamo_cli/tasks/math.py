"""Procedurally generated arithmetic: a task whose spread of difficulty is known by construction.

A 1-5M-parameter char-level model after a few minutes of SFT solves L1-L2 almost always, L3-L4
often, L5-L6 rarely, so per-prompt success rates cover the whole (0, 1) range that DynaMO's rollout
allocator works on. No files, no downloads, and the test set is the same for every seed.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from functools import lru_cache

from dynamo_cli.config.task import MathTaskConfig
from dynamo_cli.tasks.base import TASKS, Problem, Task, TaskError, check_answer_rules, check_format, stable_unit


@dataclass(frozen=True)
class Level:
    op: str  # "+", "-" or "*", written into the question as is
    a: tuple[int, int]  # inclusive range of the first operand
    b: tuple[int, int]  # inclusive range of the second operand

    @property
    def size(self) -> int:
        """Number of (a, b) pairs, counting the subtraction pairs that are later rejected."""
        return (self.a[1] - self.a[0] + 1) * (self.b[1] - self.b[0] + 1)


LEVELS: dict[str, Level] = {
    "L1": Level("+", (0, 9), (0, 9)),  # 100 questions: memorisable
    "L2": Level("*", (0, 9), (2, 9)),  # the times table: memorisable, a little slower to learn
    "L3": Level("+", (10, 99), (0, 9)),  # one carry at most, into a third digit sometimes
    "L4": Level("-", (10, 99), (0, 9)),  # one borrow at most
    "L5": Level("+", (10, 99), (10, 99)),  # two carries, 3-digit results
    "L6": Level("*", (10, 99), (2, 9)),  # carries through a product: mostly out of reach
}
TEST_FRACTION = 0.2  # share of every level's question space reserved for test, chosen by hash
ENUMERATE_MAX = 20_000  # spaces up to this size are listed in full; larger ones are sampled
TEST_SAMPLING_SEED = "math-test"  # fixed, so the test set does not depend on the run's seed


def _answer(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def slipped_answer(op: str, a: int, b: int) -> int | None:
    """The answer of a teacher who drops the carry (or borrow) out of the units column; None when that
    column has none, so there is nothing to drop. 47+38 -> 75 (not 85), 47-8 -> 49 (not 39), 47*8 -> 326
    (not 376): every other digit is computed correctly."""
    units = (a % 10) + (b % 10) if op == "+" else (a % 10) - (b % 10) if op == "-" else (a % 10) * (b % 10)
    carry = units // 10 if op != "-" else (1 if units < 0 else 0)
    if carry == 0:
        return None
    return _answer(op, a, b) + (10 * carry if op == "-" else -10 * carry)


def _is_test(question: str) -> bool:
    return stable_unit("math/" + question) < TEST_FRACTION


def _valid(level: Level, a: int, b: int) -> bool:
    return level.op != "-" or a >= b


def _problem(name: str, level: Level, a: int, b: int) -> Problem:
    question = f"{a}{level.op}{b}"
    return Problem(f"math/{name}/{question}", question, str(_answer(level.op, a, b)), name)


@lru_cache(maxsize=32)  # every MathTask lists the same sides; hashing them once is enough
def _side(name: str, level: Level, *, test: bool) -> tuple[Problem, ...]:
    """Every problem of a level on one side of the hash split, in a fixed order."""
    return tuple(
        _problem(name, level, a, b)
        for a in range(level.a[0], level.a[1] + 1)
        for b in range(level.b[0], level.b[1] + 1)
        if _valid(level, a, b) and _is_test(f"{a}{level.op}{b}") == test
    )


def _sample(name: str, level: Level, n: int, rng: random.Random, *, test: bool) -> list[Problem]:
    """n distinct problems from one side of a level. Small spaces are listed; when a side has
    fewer than n problems, train cycles through all of it (repeats) and test takes all of it."""
    if level.size <= ENUMERATE_MAX or n > level.size // 4:
        pool = _side(name, level, test=test)
        if n <= len(pool):
            return rng.sample(pool, n)
        if test:
            return list(pool)
        return list(pool) * (n // len(pool)) + rng.sample(pool, n % len(pool))
    # Rejection sampling: terminates fast because n is at most a quarter of a large space.
    seen: dict[str, Problem] = {}
    while len(seen) < n:
        a, b = rng.randint(*level.a), rng.randint(*level.b)
        question = f"{a}{level.op}{b}"
        if _valid(level, a, b) and _is_test(question) == test and question not in seen:
            seen[question] = _problem(name, level, a, b)
    return list(seen.values())


@TASKS.register(MathTaskConfig)
class MathTask(Task):
    """Integer arithmetic over the LEVELS table; prompt "37+48=" (plain) or chat, answer "85"."""

    name = "math"
    plain_cue = "="

    def __init__(
        self,
        *,
        seed: int,
        num_train: int,
        num_test_per_level: int,
        levels: list[str],
        format: str,
        answer_type: str = "integer",  # the answers are integers by construction
        answer_fallback: str = "auto",
        teacher_slip: float = 0.0,
    ):
        self.format = check_format(format)
        if not 0 <= teacher_slip <= 1:
            raise TaskError(f"teacher_slip={teacher_slip} must be in [0, 1]")
        self.teacher_slip = teacher_slip
        self.answer_type, self.answer_fallback = check_answer_rules(answer_type, answer_fallback, format)
        unknown = [level for level in levels if level not in LEVELS]
        if unknown or not levels:
            raise TaskError(f"unknown math levels {unknown or levels}; known: {list(LEVELS)}")
        if num_train < 0 or num_test_per_level < 0:
            raise TaskError("num_train and num_test_per_level must be >= 0")
        self.levels = list(levels)
        rng = random.Random(seed)
        self._train: list[Problem] = []
        self._test: list[Problem] = []
        for i, name in enumerate(self.levels):
            # num_train spread evenly over levels; the first levels take the remainder.
            n = num_train // len(levels) + (i < num_train % len(levels))
            self._train += _sample(name, LEVELS[name], n, rng, test=False)
            test_rng = random.Random(f"{TEST_SAMPLING_SEED}/{name}")
            self._test += _sample(name, LEVELS[name], num_test_per_level, test_rng, test=True)
        rng.shuffle(self._train)  # interleave levels so every batch sees the whole spread

    def demonstration(self, problem: Problem) -> str:
        """The SFT target. With teacher_slip q, a fixed share q of the problems that carry (chosen by hash of the
        id, the same in every run) is demonstrated with the units carry dropped: an imperfect teacher."""
        if self.teacher_slip and stable_unit("slip/" + problem.id) < self.teacher_slip:
            op = next(c for c in "+-*" if c in problem.question)
            a, b = (int(x) for x in problem.question.split(op))
            slipped = slipped_answer(op, a, b)
            if slipped is not None:
                return super().demonstration(dataclasses.replace(problem, answer=str(slipped)))
        return super().demonstration(problem)

    def train_problems(self) -> list[Problem]:
        """Seed-dependent sample; may repeat a problem when a level (L1) has too few."""
        return list(self._train)

    def test_problems(self) -> list[Problem]:
        """Seed-independent; grouped by level in the order given."""
        return list(self._test)
