"""The task interface: everything a recipe needs to know about a problem set.

A task is data (train/test problems) plus three pure functions (prompt, demonstration, judge),
so the SFT, RL and eval loops never branch on which task they run.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

from dynamo_cli.errors import DynamoError
from dynamo_cli.registry import Registry
from dynamo_cli.tasks.answers import ANSWER_TYPES, FALLBACKS, Verdict, judge
from dynamo_cli.verify.verifiers import JudgeVerifier, Verifier

Format = Literal["plain", "chat"]
FORMATS = ("plain", "chat")
CHAT_INSTRUCTION = "Solve the problem and give the final answer in \\boxed{}.\n\n"
JUDGE_TIMEOUT = 10.0  # seconds one built-in verification may take (task.reward_timeout sets it in a run)


TASKS = Registry("task", key=type)  # keyed by schema: several YAMLs (jsonl, gsm8k) share one schema

class TaskError(DynamoError, ValueError):
    """Unusable task data or settings; the message names the file (and line), field or value at fault. A DynamoError:
    the CLI prints it as one line, exit code 2."""


@dataclass(frozen=True)
class Problem:
    id: str  # stable across runs and seeds, unique within a task, e.g. "math/L2/37+48"
    question: str  # e.g. "37+48"
    answer: str  # canonical final answer, e.g. "85"
    level: str  # difficulty tag, e.g. "L2" ("all" for data without levels)


def stable_unit(text: str) -> float:
    """Map text to [0, 1) with sha256: unlike hash(), identical in every process and on every
    machine, so hash-based train/test splits never move."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def check_format(format: str) -> Format:
    if format not in FORMATS:
        raise TaskError(f"unknown prompt format {format!r}; expected one of {FORMATS}")
    return format  # type: ignore[return-value]


def check_answer_rules(answer_type: str, fallback: str, format: str) -> tuple[str, str]:
    """(answer type, fallback), with fallback "auto" resolved: none in chat, where the last number is as
    often one echoed from the question as an answer; last_number in plain, where the bare answer is it."""
    if answer_type not in ANSWER_TYPES:
        raise TaskError(f"unknown answer type {answer_type!r}; expected one of {ANSWER_TYPES}")
    if fallback == "auto":
        fallback = "none" if format == "chat" else "last_number"
    if fallback not in FALLBACKS:
        raise TaskError(f"unknown answer fallback {fallback!r}; expected auto or one of {FALLBACKS}")
    return answer_type, fallback


class Task(ABC):
    """A problem set plus how to prompt for, demonstrate and check an answer.

    Subclasses set `name`, `format`, `answer_type`, `answer_fallback` (check_answer_rules) and provide
    the problems; the defaults below give the "plain" (question + cue, bare answer) and "chat" (chat
    template, \\boxed answer) formats.
    """

    name: str
    format: Format
    answer_type: str  # integer | rational | expression (answers.literal_value)
    answer_fallback: str  # none | last_number: used when a completion has no \\boxed{} and no answer cue
    plain_cue: str = "\nAnswer: "  # appended to the question in the plain format
    interaction: str = "single_turn"  # how a rollout runs (rollout/episodes.py EPISODES): single_turn | environment

    @abstractmethod
    def train_problems(self) -> list[Problem]: ...

    @abstractmethod
    def test_problems(self) -> list[Problem]: ...

    def skip_notes(self) -> list[str]:
        """One line per data file with rows skipped for a stated reason (printed at start: recipes/parts.py build_task).
        A task that counts them in `skipped` alone is reported as a whole."""
        skipped = getattr(self, "skipped", 0)
        return [f"task {self.name}: skipped {skipped} rows in none of the formats it reads or with an id already taken"] if skipped else []

    def prompt_text(self, problem: Problem, tokenizer: Any = None) -> str:
        """The exact string fed to the model (the tokenizer is needed only for "chat")."""
        if self.format == "plain":
            return problem.question + self.plain_cue
        if tokenizer is None:
            raise TaskError(f"task {self.name!r}: the chat format needs a tokenizer")
        messages = [{"role": "user", "content": CHAT_INSTRUCTION + problem.question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def demonstration(self, problem: Problem) -> str:
        """The SFT target completion, without EOS (the caller appends it)."""
        if self.format == "plain":
            return problem.answer
        return f"The answer is \\boxed{{{problem.answer}}}."

    def sft_examples(self, problems: list[Problem], tokenizer: Any) -> list[tuple[list[int], list[int], list[bool]]]:
        """(prompt ids, completion ids, loss mask over the completion) per problem for SFT: the demonstration and EOS,
        all trained on (a dialogue task trains on its assistant turns only)."""
        prompts = tokenizer([self.prompt_text(p, tokenizer) for p in problems], add_special_tokens=False)["input_ids"]
        completions = tokenizer([self.demonstration(p) for p in problems], add_special_tokens=False)["input_ids"]
        return [(p, c + [tokenizer.eos_token_id], [True] * (len(c) + 1)) for p, c in zip(prompts, completions, strict=True)]

    def judge(self, completion: str, problem: Problem) -> Verdict:
        """The completion's reward (1.0 when its final answer equals the problem's), the rule that
        found that answer and the answer itself (answers.judge).

        In the plain format only the first line counts: a model that has not learnt to stop
        after "85" and rambles on ("85\\n12+3=15") still answered 85.
        """
        if self.format == "plain" and isinstance(completion, str):
            completion = completion.lstrip().split("\n", 1)[0]
        return judge(completion, problem.answer, answer_type=self.answer_type, fallback=self.answer_fallback)

    def verify(self, completion: str, problem: Problem) -> float:
        """The reward alone."""
        return self.judge(completion, problem).reward

    def default_verifier(self, *, timeout: float) -> Verifier:
        """What scores this task's completions unless a task.reward is plugged in: judge(), guarded (verify/verifiers.py)."""
        return JudgeVerifier(self.judge, timeout=timeout)

    _verifier: Verifier | None = None

    @property
    def verifier(self) -> Verifier:
        """Scores a batch of completions (rollouts and eval): chosen once (tasks/base.py build_task), default_verifier."""
        if self._verifier is None:
            self._verifier = self.default_verifier(timeout=JUDGE_TIMEOUT)
        return self._verifier

    @verifier.setter
    def verifier(self, verifier: Verifier) -> None:
        self._verifier = verifier
