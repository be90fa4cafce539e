"""A feedback dialogue: guess the environment's number, told "too high" or "too low" after each miss (task=guess).

    user: Guess my number from 1 to 8.
    assistant: 4
    user: too low
    assistant: 6
    user: too high
    assistant: 5                          solved on turn 3: reward 1 - 2 * turn_penalty

Reward 1 - turn_penalty * (turns - 1) when the number is found within `max_turns` turns, else 0: solving pays, and
fewer turns pay more. A turn without an integer gets "say one number from 1 to N". The hidden numbers are 1..high:
every one is a test problem, and training cycles through them (the prompt is the same; the skill is the search).
RL revisits `trainer.prompt_pool` of the training ids (passes over 1..high).

The SFT teacher (`teacher`): `random` guesses uniformly among the numbers still possible (seeded by the problem's
id, the same in every run): it always solves eventually but often needs more than max_turns turns; `bisect` always
guesses the middle one (at most ceil(log2(high + 1)) turns).
"""
from __future__ import annotations

import random

from dynamo_cli.config.task import GuessTaskConfig
from dynamo_cli.rollout.dialogue import Message
from dynamo_cli.tasks.answers import judge, literal_value
from dynamo_cli.tasks.base import TASKS, Problem, TaskError
from dynamo_cli.tasks.environment import Environment, EnvironmentTask

TEACHERS = ("random", "bisect")


def feedback(guess: int, target: int) -> str:
    return "too high" if guess > target else "too low"


def guess_reward(*, solved: bool, turns: int, turn_penalty: float) -> float:
    """1 - turn_penalty (turns - 1) when solved (never below 0), else 0."""
    return max(0.0, 1.0 - turn_penalty * (turns - 1)) if solved else 0.0


class GuessEnvironment(Environment):
    def __init__(self, *, high: int, turn_penalty: float):
        self.high, self.turn_penalty = high, turn_penalty
        self.target, self.turns, self.solved = 0, 0, 0.0

    def reset(self, problem: Problem) -> list[Message]:
        self.target = int(problem.answer)
        return [{"role": "user", "content": problem.question}]

    def step(self, text: str) -> tuple[str | None, float, bool]:
        self.turns += 1
        verdict = judge(text, str(self.target), answer_type="integer", fallback="last_number")
        self.rule = verdict.rule
        if verdict.reward > 0:
            self.solved = 1.0
            return None, guess_reward(solved=True, turns=self.turns, turn_penalty=self.turn_penalty), True
        value = None if verdict.extracted is None else literal_value(verdict.extracted, "integer")
        if value is None:
            return f"say one number from 1 to {self.high}", 0.0, False
        return feedback(int(value), self.target), 0.0, False

    def stats(self) -> dict[str, float]:
        return {"solved": self.solved}


@TASKS.register(GuessTaskConfig)
class GuessTask(EnvironmentTask):
    name = "guess"
    answer_type, answer_fallback = "integer", "last_number"

    def __init__(self, *, high: int, num_train: int, max_turns: int, max_tokens: int, turn_penalty: float, teacher: str):
        if high < 2:
            raise TaskError(f"high={high} must be >= 2")
        if teacher not in TEACHERS:
            raise TaskError(f"teacher={teacher!r}; expected one of {TEACHERS}")
        self.high, self.max_turns, self.max_tokens, self.turn_penalty, self.teacher = high, max_turns, max_tokens, turn_penalty, teacher
        question = f"Guess my number from 1 to {high}."
        self._test = [Problem(f"guess/{high}/{t}", question, str(t), f"N{high}") for t in range(1, high + 1)]
        # the k-th pass over the numbers gets ids of its own, so the random teacher's searches differ between passes
        self._train = [Problem(f"guess/{high}/{i % high + 1}/{i // high}", question, str(i % high + 1), f"N{high}")
                       for i in range(num_train)]

    def train_problems(self) -> list[Problem]:
        return list(self._train)

    def test_problems(self) -> list[Problem]:
        return list(self._test)

    def environment(self) -> GuessEnvironment:
        return GuessEnvironment(high=self.high, turn_penalty=self.turn_penalty)

    def demonstration_turns(self, problem: Problem) -> list[str]:
        """The teacher's guesses until it finds the number (possibly more than max_turns: SFT sees the whole search)."""
        rng, target, lo, hi, guesses = random.Random(f"guess-teacher/{problem.id}"), int(problem.answer), 1, self.high, []
        while True:
            guess = (lo + hi) // 2 if self.teacher == "bisect" else rng.randint(lo, hi)
            guesses.append(str(guess))
            if guess == target:
                return guesses
            lo, hi = (lo, guess - 1) if guess > target else (guess + 1, hi)
