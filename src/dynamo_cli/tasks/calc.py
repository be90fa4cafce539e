"""Tool use: arithmetic with a calculator the policy may call (task=calc).

    user: 47*8
    assistant: <calc>47*8</calc>            a tool call: the turn holds <calc>a op b</calc>
    user: <result>376</result>              the environment computes it
    assistant: 376                          the final answer, judged as an integer literal (answers.judge)

A turn without a call is the final answer. Reward 1 for a right final answer, else 0. The problems are the math
task's (tasks/math.py, the same levels and train/test split); by default the two-digit levels that the tiny
model cannot compute by itself (L5 ab+cd, L6 ab*c), so calling the calculator is what pays.

The SFT teacher calls the calculator on a fixed share `teacher_tool_use` of the problems (chosen by hash of the
id) and answers directly on the rest, always correctly: a policy imitating it calls on about that share of its
rollouts, and RL can learn from the rewards on which problems calling pays.
"""
from __future__ import annotations

import re

from dynamo_cli.config.task import CalcTaskConfig
from dynamo_cli.rollout.dialogue import Message
from dynamo_cli.tasks.answers import judge
from dynamo_cli.tasks.base import TASKS, Problem, TaskError, check_answer_rules, stable_unit
from dynamo_cli.tasks.environment import Environment, EnvironmentTask
from dynamo_cli.tasks.math import MathTask

CALL = re.compile(r"<calc>(.*?)</calc>", re.DOTALL)
EXPRESSION = re.compile(r"\s*(-?\d{1,9})\s*([-+*])\s*(-?\d{1,9})\s*")  # what the calculator computes: a op b


def calculate(expression: str) -> str:
    """The calculator: "47*8" -> "376"; anything but `integer op integer` (op in + - *) -> "error"."""
    m = EXPRESSION.fullmatch(expression)
    if m is None:
        return "error"
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return str(a + b if op == "+" else a - b if op == "-" else a * b)


class CalcEnvironment(Environment):
    def __init__(self, *, answer_type: str, fallback: str):
        self.answer_type, self.fallback = answer_type, fallback
        self.tool_calls, self.solved, self.answer = 0, 0.0, ""

    def reset(self, problem: Problem) -> list[Message]:
        self.answer = problem.answer
        return [{"role": "user", "content": problem.question}]

    def step(self, text: str) -> tuple[str | None, float, bool]:
        call = CALL.search(text)
        if call is not None:
            self.tool_calls += 1
            return f"<result>{calculate(call.group(1))}</result>", 0.0, False
        verdict = judge(text, self.answer, answer_type=self.answer_type, fallback=self.fallback)
        self.rule, self.solved = verdict.rule, verdict.reward
        return None, verdict.reward, True

    def stats(self) -> dict[str, float]:
        return {"tool_calls": float(self.tool_calls), "solved": self.solved}


@TASKS.register(CalcTaskConfig)
class CalcTask(EnvironmentTask):
    name = "calc"

    def __init__(self, *, seed: int, num_train: int, num_test_per_level: int, levels: list[str], max_turns: int, max_tokens: int,
                 teacher_tool_use: float, answer_type: str = "integer", answer_fallback: str = "last_number"):
        if not 0 <= teacher_tool_use <= 1:
            raise TaskError(f"teacher_tool_use={teacher_tool_use} must be in [0, 1]")
        self.answer_type, self.answer_fallback = check_answer_rules(answer_type, answer_fallback, "chat")
        self.max_turns, self.max_tokens, self.teacher_tool_use = max_turns, max_tokens, teacher_tool_use
        math = MathTask(seed=seed, num_train=num_train, num_test_per_level=num_test_per_level, levels=levels, format="plain",
                        teacher_slip=0.0)
        self._train = [_renamed(p) for p in math.train_problems()]
        self._test = [_renamed(p) for p in math.test_problems()]

    def train_problems(self) -> list[Problem]:
        return list(self._train)

    def test_problems(self) -> list[Problem]:
        return list(self._test)

    def environment(self) -> CalcEnvironment:
        return CalcEnvironment(answer_type=self.answer_type, fallback=self.answer_fallback)

    def demonstration_turns(self, problem: Problem) -> list[str]:
        if stable_unit("calc-tool/" + problem.id) < self.teacher_tool_use:
            return [f"<calc>{problem.question}</calc>", problem.answer]
        return [problem.answer]


def _renamed(problem: Problem) -> Problem:
    return Problem(id="calc/" + problem.id.removeprefix("math/"), question=problem.question, answer=problem.answer, level=problem.level)
