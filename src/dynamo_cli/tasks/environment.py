"""A task that is an environment: the policy and the environment take turns until the environment is done.

    env = task.environment()                 one fresh environment per trajectory
    messages = env.reset(problem)            the first messages (the prompt), a pure function of the problem
    reply, reward, done = env.step(text)     after each policy turn; reply None: nothing more to say

A trajectory ends when the environment is done, after `max_turns` policy turns, when a policy turn is cut
(it did not end with EOS), or when the next reply would use up the trajectory's token budget `max_tokens`
(policy and environment tokens of the response region together). Its reward is the sum of the step rewards.
The rollout engine for environments is `episodes.MultiTurnEpisodes`; a reply is rendered into the dialogue
with the chat template (dialogue.between_text) as a `reply_role` message.

SFT: `demonstration_turns(problem)` gives a teacher's assistant turns; they are played through a fresh
environment, so the demonstration holds the environment's own replies, tokenized as a rollout would be.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from dynamo_cli.rollout.dialogue import Message, render, tokenize_dialogue
from dynamo_cli.tasks.answers import Verdict
from dynamo_cli.tasks.base import Problem, Task, TaskError


class Environment(ABC):
    """One trajectory's environment. `rule`: the answer-extraction rule (answers.RULES) of its last verdict;
    `stats()`: per-trajectory counters logged as rollout/<name> and eval/<name> means (e.g. tool_calls)."""

    rule: str = "none"

    @abstractmethod
    def reset(self, problem: Problem) -> list[Message]: ...

    @abstractmethod
    def step(self, text: str) -> tuple[str | None, float, bool]: ...

    def stats(self) -> dict[str, float]:
        return {}


class EnvironmentTask(Task):
    """A task whose rollouts are dialogues with an environment. Subclasses set `max_turns`, `max_tokens` and
    implement `environment()` and `demonstration_turns(problem)`."""

    interaction = "environment"  # rollout/episodes.py EPISODES: the multi-turn rollout engine
    format = "chat"  # dialogues are rendered with the chat template
    reply_role = "user"  # the role an environment reply takes in the chat template
    max_turns: int  # policy turns per trajectory at most
    max_tokens: int  # response-region tokens (policy + environment) per trajectory at most

    @abstractmethod
    def environment(self) -> Environment: ...

    @abstractmethod
    def demonstration_turns(self, problem: Problem) -> list[str]:
        """A teacher's assistant turns for `problem`, in order."""

    def prompt_text(self, problem: Problem, tokenizer: Any = None) -> str:
        if tokenizer is None:
            raise TaskError(f"task {self.name!r}: an environment's dialogue needs a tokenizer (its chat template)")
        return render(self.environment().reset(problem), tokenizer, generation_prompt=True)

    def demonstration_dialogue(self, problem: Problem) -> list[Message]:
        """The teacher's turns played through a fresh environment: the whole dialogue, replies included."""
        env = self.environment()
        messages = list(env.reset(problem))
        for text in self.demonstration_turns(problem):
            messages.append({"role": "assistant", "content": text})
            reply, _, done = env.step(text)
            if done or reply is None:
                break
            messages.append({"role": self.reply_role, "content": reply})
        return messages

    def sft_examples(self, problems: list[Problem], tokenizer: Any) -> list[tuple[list[int], list[int], list[bool]]]:
        return [self.sft_example(p, tokenizer) for p in problems]

    def sft_example(self, problem: Problem, tokenizer: Any) -> tuple[list[int], list[int], list[bool]]:
        return tokenize_dialogue(self.demonstration_dialogue(problem), tokenizer)

    def demonstration(self, problem: Problem) -> str:
        """The teacher's last turn (its final answer); SFT trains on the whole dialogue (`sft_example`)."""
        return self.demonstration_turns(problem)[-1]

    def judge(self, completion: str, problem: Problem) -> Verdict:
        raise TaskError(f"task {self.name!r} is an environment: its rewards come from episodes, not from one completion")
