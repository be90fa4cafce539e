"""Dialogues from a local file for multi-turn SFT (task=chat_jsonl).

Each row holds a `messages` list of {"role", "content"} (system / user / assistant / ...), the format of the
common chat datasets. SFT trains on every assistant turn and nothing else (dialogue.tokenize_dialogue: the
user's and system's tokens and the template's role headers carry no loss), rendered with the model's chat
template (the tiny model's: models.TINY_CHAT_TEMPLATE, "role: content" lines).

Eval (and RL, if asked) needs something verifiable: a held-out dialogue becomes a problem whose prompt is the
dialogue up to its final assistant turn and whose answer is that turn's final answer ("... The answer is 38.",
answers.extract_answer). Dialogues whose final assistant turn has no answer train but are never tested.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

from dynamo_cli.config.task import ChatJsonlTaskConfig
from dynamo_cli.rollout.dialogue import render, tokenize_dialogue
from dynamo_cli.tasks.answers import extract_answer, literal_value
from dynamo_cli.tasks.base import TASKS, Problem, Task, TaskError, check_answer_rules, stable_unit
from dynamo_cli.tasks.jsonl import field, read_rows


@dataclass(frozen=True)
class Dialogue(Problem):
    messages: tuple = ()  # ({"role", "content"}, ...): the whole dialogue


def parse_messages(raw: Any, where: str) -> tuple:
    """A row's messages, checked: a non-empty list of {role: str, content: str} with an assistant turn."""
    if not isinstance(raw, list) or not raw:
        raise TaskError(f"{where}: messages must be a non-empty list of {{role, content}}")
    messages = []
    for k, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TaskError(f"{where}: message {k} must have string fields role and content, got {repr(m)[:80]}")
        messages.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in messages):
        raise TaskError(f"{where}: no assistant turn to learn from")
    return tuple(messages)


@TASKS.register(ChatJsonlTaskConfig)
class ChatJsonlTask(Task):
    name = "chat_jsonl"
    format = "chat"

    def __init__(self, *, path: str, test_path: str | None, messages_field: str, id_field: str | None, test_fraction: float,
                 seed: int, max_problems: int | None, answer_type: str, answer_fallback: str):
        self.answer_type, self.answer_fallback = check_answer_rules(answer_type, answer_fallback, "chat")
        train = self._read(path, messages_field, id_field, max_problems)
        if test_path is not None:
            test = self._read(test_path, messages_field, id_field, max_problems)
        else:
            test = [d for d in train if stable_unit(f"chat/{seed}/{d.id}") < test_fraction]
            train = [d for d in train if stable_unit(f"chat/{seed}/{d.id}") >= test_fraction]
        random.Random(seed).shuffle(train)
        self._train, self._test = train, [d for d in test if d.answer]
        if not self._train:
            raise TaskError(f"{path}: no training dialogues")
        if not self._test:
            raise TaskError(f"{test_path or path}: no test dialogue whose final assistant turn has an answer "
                            f"({self.answer_type}) to check")

    def _read(self, path: str, messages_field: str, id_field: str | None, max_problems: int | None) -> list[Dialogue]:
        dialogues = []
        for where, row in read_rows(path, max_problems):
            messages = parse_messages(field(row, messages_field, where, (list,)), where)
            key = field(row, id_field, where, (str, int)) if id_field else None
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            found = extract_answer(messages[last]["content"])
            answer = found if found is not None and literal_value(found, self.answer_type) is not None else ""
            ident = str(key) if id_field else hashlib.sha256(json.dumps(messages).encode()).hexdigest()[:16]
            question = next((m["content"] for m in reversed(messages[:last]) if m["role"] != "assistant"), "")
            dialogues.append(Dialogue(id=f"chat/{ident}", question=question, answer=answer, level="all", messages=messages))
        return dialogues

    def train_problems(self) -> list[Problem]:
        return list(self._train)

    def test_problems(self) -> list[Problem]:
        return list(self._test)

    def _last_turn(self, problem: Dialogue) -> int:
        return max(i for i, m in enumerate(problem.messages) if m["role"] == "assistant")

    def prompt_text(self, problem: Dialogue, tokenizer: Any = None) -> str:
        """The dialogue up to its final assistant turn, with the generation prompt."""
        if tokenizer is None:
            raise TaskError("task chat_jsonl renders dialogues with the tokenizer's chat template: it needs a tokenizer")
        return render(list(problem.messages[:self._last_turn(problem)]), tokenizer, generation_prompt=True)

    def demonstration(self, problem: Dialogue) -> str:
        return problem.messages[self._last_turn(problem)]["content"]

    def sft_examples(self, problems: list[Problem], tokenizer: Any) -> list[tuple[list[int], list[int], list[bool]]]:
        return [self.sft_example(p, tokenizer) for p in problems]

    def sft_example(self, problem: Dialogue, tokenizer: Any) -> tuple[list[int], list[int], list[bool]]:
        """The whole dialogue; loss on every assistant turn (and the EOS that ends it) only."""
        return tokenize_dialogue(list(problem.messages), tokenizer)
