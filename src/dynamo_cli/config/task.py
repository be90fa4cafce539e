"""task schemas."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from dynamo_cli.config.base import GroupConfig, check, one_of, positive


# ---------------------------------------------------------------------------------------------- task
@dataclass
class TaskConfig(GroupConfig):
    name: str = MISSING
    format: str = "plain"  # plain: the bare question and a cue; chat: rendered with the tokenizer's chat template
    max_new_tokens: Optional[int] = None  # completion length limit for rollouts and eval; None: 8 plain, 256 chat
    # integer ("-1,234") | rational (also "2.5", "3/4" in lowest terms) | expression (compared by math-verify);
    # integer and rational answers must be literals: "68*3" is an expression, never 204. Default: per task below
    answer_type: str = MISSING
    # no \boxed{} and no "the answer is": none scores 0, last_number takes the last number; auto: none in chat
    # (where the last number is as often one echoed from the question), last_number in plain
    answer_fallback: str = "auto"
    # bring your own reward (verify/user_reward.py): <module>:<function> or <file.py>:<function> taking (completion, problem
    # dict) -> float, or :<Class> whose instances (one per worker) are called so; replaces the task's verifier
    reward: Optional[str] = None
    reward_batched: bool = False  # task.reward takes (completions, problems) lists and returns a list of floats
    reward_timeout: float = 10.0  # seconds one verification may take (a batch, when batched); past it: 0, counted
    workers: int = 2  # worker processes that run task.reward (task=code: sandboxes run at once)

    def __post_init__(self) -> None:
        from dynamo_cli.tasks.answers import ANSWER_TYPES, FALLBACKS  # the allowed values live with their implementation
        from dynamo_cli.tasks.base import FORMATS

        one_of("task.format", self.format, FORMATS)
        one_of("task.answer_type", self.answer_type, ANSWER_TYPES)
        one_of("task.answer_fallback", self.answer_fallback, ("auto", *FALLBACKS))
        check(self.reward is None or ":" in self.reward.strip(":"),
               f"task.reward={self.reward!r} must be <module>:<function> or <file.py>:<function> (a class works too)")
        positive("task.reward_timeout", self.reward_timeout)
        positive("task.workers", self.workers)
        if self.max_new_tokens is None:  # a chat model reasons before its answer; a plain completion is the answer
            self.max_new_tokens = 256 if self.format == "chat" else 8
        positive("task.max_new_tokens", self.max_new_tokens)


def _check_math_problems(cfg) -> None:
    """The procedural math problems' keys, shared by task=math and task=calc (which uses the same problems)."""
    positive("task.num_train", cfg.num_train)
    positive("task.num_test_per_level", cfg.num_test_per_level)
    from dynamo_cli.tasks.math import LEVELS  # the levels live with their generator

    for level in cfg.levels:
        one_of("task.levels", level, tuple(LEVELS))
    check(len(cfg.levels) > 0, "task.levels is empty; choose from: " + ", ".join(LEVELS))


@dataclass
class MathTaskConfig(TaskConfig):
    """Procedural arithmetic over six difficulty levels (tasks/math.py): L1 a+b and L2 a×b on single digits,
    L3 ab+c, L4 ab−c, L5 ab+cd, L6 ab×c."""

    name: str = "math"
    seed: int = 1234  # the data set's seed (fixed across training seeds so runs see the same data)
    num_train: int = 30000  # training problems, spread evenly over the levels
    num_test_per_level: int = 100  # test problems per level (identical for every seed)
    # The testbed (docs/tasks.md "Why the testbed works"): one-digit carries and borrows (L3, L4) that SFT leaves half-learnt,
    # and two-digit sums (L5) that it mostly cannot do yet. L1/L2 single-digit facts are out: their test facts never
    # occur in training, so nobody can learn them.
    levels: list[str] = field(default_factory=lambda: ["L3", "L4", "L5"])
    answer_type: str = "integer"  # the answers are integers by construction
    # share of carrying problems whose SFT demonstration drops the units carry/borrow: an imperfect teacher whose
    # systematic slip the verifier catches (0: a perfect teacher, whose demonstrations RL can only sharpen)
    teacher_slip: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.teacher_slip <= 1, f"task.teacher_slip={self.teacher_slip} must be in [0, 1]")
        _check_math_problems(self)


@dataclass
class JsonlTaskConfig(TaskConfig):
    """Problems from a local JSONL or Parquet file (GSM8K-style `#### answer` understood)."""

    name: str = "jsonl"
    path: str = MISSING  # the problems file (.jsonl/.json/.parquet)
    test_path: Optional[str] = None  # a separate test file; otherwise a stable hash split of `path`
    question_field: str = "question"
    answer_field: str = "answer"
    level_field: Optional[str] = None  # a difficulty tag column, if any
    id_field: Optional[str] = None  # a stable id column; otherwise a hash of the question
    test_fraction: float = 0.1  # share of `path` held out as test when there is no test_path
    seed: int = 1234
    max_problems: Optional[int] = None  # cap on rows read (handy for smoke runs)
    answer_type: str = "rational"  # any number; expression for symbolic (MATH-style) data. Rows of another type are skipped

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.test_fraction < 1, f"task.test_fraction={self.test_fraction} must be in (0, 1)")
        for key in ("path", "test_path"):
            value = getattr(self, key)
            if value is not None:
                check(os.path.isfile(value), f"task.{key}={value!r}: no such file")


@dataclass
class CodeTaskConfig(TaskConfig):
    """Python function-writing problems (MBPP or HumanEval format, local JSONL) whose tests run in a sandbox."""

    name: str = "code"
    path: str = MISSING  # the problems file (.jsonl); conf/task/code.yaml: the project's fixture
    test_path: Optional[str] = None  # a separate test file; otherwise a stable hash split of `path`
    test_fraction: float = 0.25  # share of `path` held out as test when there is no test_path
    seed: int = 1234
    max_problems: Optional[int] = None  # cap on rows read
    max_new_tokens: Optional[int] = 160  # a short function, in characters for the tiny model's tokenizer
    answer_type: str = "expression"  # unused by code: its tests decide
    reward_mode: str = "fraction"  # fraction: share of the tests passed | all: 1 only when every test passes
    prompt_tests: int = 1  # tests shown in the prompt (they name the function and its arguments)
    timeout: float = 5.0  # wall-clock seconds per program, then its process group is killed
    cpu_seconds: int = 2  # RLIMIT_CPU per program
    memory_mb: int = 512  # RLIMIT_AS per program
    max_processes: int = 8  # RLIMIT_NPROC inside the sandbox: processes and threads a program may have at once
    file_mb: int = 16  # RLIMIT_FSIZE, and the size of the program's tmpfs work dir under bubblewrap
    # bubblewrap: each program in its own user, PID, network, IPC and mount namespaces (docs/robustness.md "The code
    # sandbox"); none: no kernel isolation, the program runs as you with your files and network: only on purpose
    isolation: str = "bubblewrap"

    def __post_init__(self) -> None:
        super().__post_init__()
        from dynamo_cli.tasks.code import REWARD_MODES
        from dynamo_cli.verify.sandbox import ISOLATIONS

        one_of("task.reward_mode", self.reward_mode, REWARD_MODES)
        one_of("task.isolation", self.isolation, ISOLATIONS)
        check(0 < self.test_fraction < 1, f"task.test_fraction={self.test_fraction} must be in (0, 1)")
        positive("task.prompt_tests", self.prompt_tests, strict=False)
        for key in ("timeout", "cpu_seconds", "memory_mb", "max_processes", "file_mb"):
            positive(f"task.{key}", getattr(self, key))


@dataclass
class EnvironmentTaskConfig(TaskConfig):
    """A task that is an environment (tasks/environment.py): multi-turn rollouts (rollout=hf), loss on policy tokens."""

    format: str = "chat"  # dialogues are rendered with the chat template
    max_turns: int = 3  # policy turns per trajectory at most
    max_tokens: int = 96  # response tokens per trajectory at most, policy and environment together
    # task.max_new_tokens is the limit of one policy turn

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of("task.format", self.format, ("chat",))
        positive("task.max_turns", self.max_turns)
        positive("task.max_tokens", self.max_tokens)

    def check_run(self, run) -> None:
        check(run.rollout.name == "hf", f"task={self.name} is an environment: its multi-turn rollouts run on rollout=hf, "
              f"not rollout={run.rollout.name}")


@dataclass
class CalcTaskConfig(EnvironmentTaskConfig):
    """Tool use (tasks/calc.py): arithmetic with a calculator the policy may call, <calc>47*8</calc> -> <result>376</result>."""

    name: str = "calc"
    seed: int = 1234  # the math task's data seed: the same problems and split
    num_train: int = 20000
    num_test_per_level: int = 50
    levels: list[str] = field(default_factory=lambda: ["L5", "L6"])  # two-digit sums and products: the tool pays
    teacher_tool_use: float = 0.5  # share of problems (by hash of the id) on which the SFT teacher calls the calculator
    answer_type: str = "integer"
    answer_fallback: str = "last_number"  # the final turn is the bare number, as in the plain format
    max_new_tokens: Optional[int] = 24  # one turn: "<calc>47*8</calc>" or "376"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.teacher_tool_use <= 1, f"task.teacher_tool_use={self.teacher_tool_use} must be in [0, 1]")
        _check_math_problems(self)


@dataclass
class GuessTaskConfig(EnvironmentTaskConfig):
    """A feedback dialogue (tasks/guess.py): guess a number from 1 to `high`, told "too high" / "too low"."""

    name: str = "guess"
    high: int = 8  # the number is one of 1..high (every one is a test problem)
    num_train: int = 4096  # training problems: passes over 1..high
    turn_penalty: float = 0.2  # reward 1 - turn_penalty * (turns - 1) when solved: fewer turns pay more
    teacher: str = "random"  # SFT teacher: random (a number still possible) | bisect (the middle one)
    answer_type: str = "integer"
    answer_fallback: str = "last_number"  # a guess is a bare number
    max_turns: int = 4
    max_tokens: int = 128
    max_new_tokens: Optional[int] = 8  # one guess

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.high >= 2, f"task.high={self.high} must be >= 2")
        positive("task.num_train", self.num_train)
        check(0 <= self.turn_penalty <= 1, f"task.turn_penalty={self.turn_penalty} must be in [0, 1]")
        from dynamo_cli.tasks.guess import TEACHERS

        one_of("task.teacher", self.teacher, TEACHERS)


@dataclass
class ChatJsonlTaskConfig(TaskConfig):
    """Dialogues from a local JSONL file (tasks/chat_jsonl.py): rows with a `messages` list of {role, content};
    SFT trains on every assistant turn; eval asks for the final assistant turn of held-out dialogues."""

    name: str = "chat_jsonl"
    path: str = MISSING  # the dialogues file (.jsonl/.json/.parquet)
    test_path: Optional[str] = None  # a separate test file; otherwise a stable hash split of `path`
    messages_field: str = "messages"
    id_field: Optional[str] = None  # a stable id column; otherwise a hash of the messages
    test_fraction: float = 0.2  # share of `path` held out as test when there is no test_path
    seed: int = 1234  # the hash split's and the training order's seed
    max_problems: Optional[int] = None  # cap on rows read
    format: str = "chat"  # dialogues are rendered with the chat template
    answer_type: str = "rational"  # eval: the final assistant turn's answer ("The answer is 12."); rows without one train only

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of("task.format", self.format, ("chat",))
        check(0 < self.test_fraction < 1, f"task.test_fraction={self.test_fraction} must be in (0, 1)")
        for key in ("path", "test_path"):
            value = getattr(self, key)
            if value is not None:
                check(os.path.isfile(value), f"task.{key}={value!r}: no such file")


@dataclass
class ReasoningGymTaskConfig(TaskConfig):
    """Procedural reasoning problems from the reasoning-gym library (tasks/reasoning_gym.py): its generators make them, its
    score_answer judges the answer a completion gives, in worker processes under task.reward_timeout."""

    name: str = "reasoning_gym"
    # generator -> weight: its share of the training problems, e.g. task.datasets={chain_sum: 1, basic_arithmetic: 2};
    # null: {chain_sum: 1}. (A mapping typed Any: an override replaces it instead of merging into a default)
    datasets: Any = None
    # generator -> its own config keys (reasoning-gym's <Generator>Config): task.config={chain_sum: {max_terms: 3}} or
    # +task.config.chain_sum.max_terms=3; null: none. Its seed and size are dynamo's (task.seed, task.num_train, ...)
    config: Any = None
    seed: int = 1234  # the problems' seed (fixed across training seeds, so runs see the same data and the same test split)
    num_train: int = 2000  # training problems, spread over the generators by weight
    num_test_per_dataset: int = 100  # held-out problems per generator, none of them a training question
    # false: reward 1 for full marks from the generator's score_answer, else 0 (several give 0.01 for any parseable answer,
    # or credit for containing the answer; pass@k and the allocators count reward > 0 as solved); true: its score as is
    partial_credit: bool = False
    answer_type: str = "expression"  # unused: the generator's score_answer judges

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.datasets is None:
            self.datasets = {"chain_sum": 1.0}
        if self.config is None:
            self.config = {}
        check(isinstance(self.datasets, dict), f"task.datasets={self.datasets!r} must be a mapping generator -> weight, e.g. {{chain_sum: 1}}")
        check(isinstance(self.config, dict), f"task.config={self.config!r} must be a mapping generator -> its config keys")
        check(len(self.datasets) > 0, "task.datasets is empty; name at least one reasoning-gym generator, e.g. {chain_sum: 1}")
        for name, weight in self.datasets.items():
            check(isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0,
                  f"task.datasets.{name}={weight!r} must be a number > 0")
        for name, keys in self.config.items():
            check(name in self.datasets, f"task.config.{name}: {name} is not in task.datasets ({', '.join(self.datasets)})")
            check(isinstance(keys, dict), f"task.config.{name}={keys!r} must be a mapping of {name}'s config keys")
            for key in ("seed", "size"):
                check(key not in keys, f"task.config.{name}.{key} is set by dynamo (task.seed, task.num_train, "
                                       "task.num_test_per_dataset); remove it")
        positive("task.num_train", self.num_train)
        positive("task.num_test_per_dataset", self.num_test_per_dataset)
