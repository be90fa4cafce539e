"""recipes schemas."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from dynamo_cli.config.algorithm import AlgorithmConfig, OptimConfig
from dynamo_cli.config.base import check, check_batch_size, one_of, positive
from dynamo_cli.config.eval import EvalSettings
from dynamo_cli.config.logger import LoggerConfig
from dynamo_cli.config.model import ModelConfig, check_training_precision


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
            positive(f"trainer.{key}", getattr(self, key))
        check_batch_size("trainer.micro_batch_size", self.micro_batch_size)
        for key in ("eval_every", "save_every"):
            positive(f"trainer.{key}", getattr(self, key), strict=False)


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
    # every N steps (0: never) a sample of the step's rollouts (rollouts.jsonl's keys) goes to W&B as the table
    # rollouts/completions, and without a terminal the step's best and worst completion are printed (the live view shows
    # them every step): reading what earns the reward is how a hacked reward shows
    log_completions_every: int = 10
    log_completions_rows: int = 16  # rollouts in each W&B table
    # stop (final eval and checkpoint) once this many rollouts were generated, dropped ones included: one budget for
    # methods that spend different numbers per step (allocator=dapo|greso); null: trainer.steps alone decides
    rollout_budget: Optional[int] = None
    # an optimiser step with a NaN/Inf loss or gradient norm is skipped (runtime/guard.py); more than this many in a row stop the run
    max_skipped_steps: int = 8
    # signals that preempt a run (SLURM sends SIGTERM, or SIGUSR1 with --signal): finish the step, checkpoint, exit
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    preempt_exit_code: int = 143  # the exit code after a preemption checkpoint (128 + SIGTERM); see docs/robustness.md "What survives what"

    def __post_init__(self) -> None:
        positive("trainer.max_skipped_steps", self.max_skipped_steps, strict=False)
        for name in self.preempt_signals:
            check(name in PREEMPT_SIGNALS, f"trainer.preempt_signals: {name!r} is not allowed; choose from: {', '.join(PREEMPT_SIGNALS)}")
        check(0 < self.preempt_exit_code < 256, f"trainer.preempt_exit_code={self.preempt_exit_code} must be in 1..255")
        for key in ("steps", "prompts_per_step", "keep_last", "log_every"):
            positive(f"trainer.{key}", getattr(self, key))
        if self.rollout_budget is not None:
            positive("trainer.rollout_budget", self.rollout_budget)
        if self.prompt_pool is not None:
            positive("trainer.prompt_pool", self.prompt_pool)
        positive("trainer.log_completions_rows", self.log_completions_rows)
        for key in ("eval_every", "save_every", "live_rows", "log_completions_every"):
            positive(f"trainer.{key}", getattr(self, key), strict=False)
        if self.resume not in ("never", "auto"):
            check(os.path.isdir(self.resume), f"trainer.resume={self.resume!r}: choose never, auto or an existing checkpoint dir")


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

    @property
    def eval_max_new_tokens(self) -> int:
        """Eval's completion limit: eval.max_new_tokens, else the task's."""
        return self.eval.max_new_tokens or self.task.max_new_tokens

    def __post_init__(self) -> None:
        check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"device={self.device!r} is not allowed; choose one of: auto, cpu, cuda, cuda:N",
        )
        check(0 < self.memory_fraction <= 1, f"memory_fraction={self.memory_fraction} must be in (0, 1]")


@dataclass
class SFTConfig(RunConfig):
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: SFTTrainerConfig = field(default_factory=SFTTrainerConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_training_precision(self.model)


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

    @property
    def max_new_tokens(self) -> int:
        """The rollouts' completion limit: rollout.max_new_tokens, else the task's."""
        return self.rollout.max_new_tokens or self.task.max_new_tokens

    def __post_init__(self) -> None:
        super().__post_init__()
        check_training_precision(self.model)
        max_length, buffer = self.algorithm.overlong_penalty.resolved(self.max_new_tokens)
        check(buffer <= max_length, f"algorithm.overlong_penalty.buffer={buffer} must be <= its max_length={max_length}")
        for part in (self.task, self.sampler, self.allocator, self.modulator, self.rollout, self.critic):
            part.check_run(self)  # each option's cross-checks against the rest of the run (config/base.py GroupConfig)


@dataclass
class EvalConfig(RunConfig):
    split: str = "test"  # test | train

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of("split", self.split, ("test", "train"))


@dataclass
class ExportConfig:
    """`dynamo export`: a checkpoint as one plain Hugging Face model dir (a LoRA adapter merged into its base)."""

    name: Optional[str] = None  # appended to the run dir name
    model: Any = MISSING  # what to export: model.path=<checkpoint dir>; model.dtype sets the saved dtype
    output: Optional[str] = None  # the export dir (must not exist or be empty); None: <run dir>/model

    def __post_init__(self) -> None:
        if self.output is not None:
            check(not os.path.exists(self.output) or (os.path.isdir(self.output) and not os.listdir(self.output)),
                   f"output={self.output!r} exists and is not an empty dir; choose a new one")


@dataclass
class ScoreConfig:
    """`dynamo score`: score given completions with the task's own verifier (task.reward when set), as training does."""

    name: Optional[str] = None  # appended to the run dir name
    task: Any = MISSING
    input: str = MISSING  # a JSONL file, one {"prompt_id": <id as rollouts.jsonl writes it>, "completion": <text>} per line

    def __post_init__(self) -> None:
        from dynamo_cli.config.task import EnvironmentTaskConfig

        check(os.path.isfile(self.input), f"input={self.input!r}: no such file")
        check(not isinstance(self.task, EnvironmentTaskConfig),
              f"task={self.task.name} is multi-turn (its rewards come from a dialogue with its environment): dynamo score "
              "scores single completions; choose a single-turn task")


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
    baseline: str = "grpo"  # the method (row label) every other is contrasted with, paired by seed
    target: Optional[float] = None  # rollouts-to-target threshold; None: 90% of the way from the start to the best final mean
    results: Optional[str] = "docs/results.md"  # generated page whose sweep section is rewritten; None: leave it alone

    def __post_init__(self) -> None:
        one_of("sweep.launcher", self.launcher, ("basic", "joblib", "slurm"))
        positive("sweep.jobs", self.jobs)
        check(self.launcher == "joblib" or self.jobs == 1, f"sweep.jobs={self.jobs} needs sweep.launcher=joblib")
        one_of("sweep.metric", self.metric, ("pass@1", "greedy_pass1"))
        check(len(self.grid) > 0 and all(len(v) > 0 for v in self.grid.values()),
               "sweep.grid needs at least one key with at least one value")
        if self.target is not None:
            check(0 <= self.target <= 1, f"sweep.target={self.target} must be in [0, 1]")
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
            check(os.path.isdir(self.aggregate), f"aggregate={self.aggregate!r} is not a directory (expected a multirun dir)")
