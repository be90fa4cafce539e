"""Shared pieces of the benchmarks: the result record, the checkpoint they measure, the problems they use."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# where a checkpoint is looked for when none is given: the latest sweep's SFT, then any `dynamo sft` run,
# then the one a previous bench trained
CHECKPOINT_GLOBS = ("outputs/sweep/*/*/sft/checkpoints/final", "outputs/sft/*/*/checkpoints/final",
                    "outputs/bench/sft*/checkpoints/final")


@dataclass
class BenchResult:
    """What one benchmark found: markdown for the results page and the headline ratios."""

    name: str
    command: str
    lines: list[str]  # markdown: what was measured, how, and the numbers
    ratios: dict[str, float | None] = field(default_factory=dict)

    def markdown(self) -> str:
        return "\n".join([f"### {self.name}", "", f"`{self.command}`", "", *self.lines]) + "\n"


def print_result(result: BenchResult) -> None:
    print(result.markdown())
    for key, value in result.ratios.items():
        print(f"RATIO {key} = {'n/a' if value is None else f'{value:.4g}'}")


def dynamo(*args: str) -> subprocess.CompletedProcess:
    """The dynamo CLI as a separate process (output captured; raises with its stderr on failure)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true"}
    result = subprocess.run([sys.executable, "-m", "dynamo_cli", *args], check=False, cwd=REPO, env=env, text=True, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"dynamo {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def latest(globs: tuple[str, ...]) -> Path | None:
    found = [p for pattern in globs for p in REPO.glob(pattern) if (p / "config.json").is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def shown(path: Path) -> str:
    """A path as the results page shows it: relative to the repository when inside it, never this machine's root."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else resolved.name


def checkpoint(path: str | None, *, quick: bool) -> tuple[Path, str]:
    """(checkpoint dir, how it was found). Quick mode trains a 20-step one rather than picking up a real run."""
    if path:
        if not (Path(path) / "config.json").is_file():
            raise SystemExit(f"bench: --checkpoint {path} holds no config.json: not a Hugging Face checkpoint")
        return Path(path), "given with --checkpoint"
    if not quick:
        found = latest(CHECKPOINT_GLOBS)
        if found is not None:
            return found, "the latest SFT checkpoint under outputs/"
    run_dir = REPO / "outputs" / "bench" / ("sft-quick" if quick else "sft")
    if not (run_dir / "checkpoints" / "final" / "config.json").is_file():
        print(f"bench: no SFT checkpoint found; training one into {run_dir} (dynamo sft{' trainer.steps=20' if quick else ''})",
              flush=True)
        dynamo("sft", "logger=none", f"hydra.run.dir={run_dir}",
               *(["trainer.steps=20", "trainer.eval_every=0", "eval.max_problems=8", "task.num_train=500"] if quick else []))
    return run_dir / "checkpoints" / "final", "trained by the bench (dynamo sft)"


def from_tree(*places: str):
    """The first of `module:name` places that imports: bench f runs these helpers on this tree and on a baseline commit's
    tree, whose modules sat flat in src/dynamo_cli/ before it was grouped into folders."""
    import importlib

    for place in places:
        module, _, name = place.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {places} imports in this tree")


def load(checkpoint_dir: Path):
    """(model, tokenizer, math task) on CPU, as `dynamo train` loads them."""
    import torch

    from dynamo_cli.cli import quiet_libraries

    build_task = from_tree("dynamo_cli.recipes.parts:build_task", "dynamo_cli.builders:build_task")
    tiny = from_tree("dynamo_cli.config.model:TinyModelConfig", "dynamo_cli.config:TinyModelConfig")
    math = from_tree("dynamo_cli.config.task:MathTaskConfig", "dynamo_cli.config:MathTaskConfig")
    load_policy = from_tree("dynamo_cli.models.load:load_policy", "dynamo_cli.models:load_policy")
    quiet_libraries()  # offline, no progress bars
    model, tokenizer = load_policy(tiny(path=str(checkpoint_dir)), torch.device("cpu"))
    return model, tokenizer, build_task(math())


def variance_allocator(n: int):
    """allocator=variance with its schema's defaults and budget n per prompt, on this tree or the baseline's."""
    try:
        from dynamo_cli.allocation.base import ALLOCATORS
        from dynamo_cli.allocation.variance import VarianceAllocatorConfig

        return ALLOCATORS.build(VarianceAllocatorConfig(), n=n)
    except ImportError:
        from dynamo_cli.builders import allocator_from_config

        from dynamo_cli.config import VarianceAllocatorConfig

        return allocator_from_config(VarianceAllocatorConfig(), n=n)


def prompt_batch(task, size: int, seed: int = 0) -> list:
    """A fixed batch of training problems: the first `size` of a seeded permutation (all levels mixed)."""
    import torch

    problems = task.train_problems()
    order = torch.randperm(len(problems), generator=torch.Generator().manual_seed(seed))[:size]
    return [problems[i] for i in order.tolist()]


def warm_history(model, tokenizer, task, problems, *, n: int, rollouts_per_prompt: int, seed: int, max_new_tokens: int):
    """A VarianceAllocator (train's default bounds, budget n per prompt) whose success history comes from one
    shared warm-up draw of `rollouts_per_prompt` rollouts per prompt."""
    import torch

    score = from_tree("dynamo_cli.rollout.episodes:score", "dynamo_cli.stages.collect:score")
    generate = from_tree("dynamo_cli.rollout.hf:generate", "dynamo_cli.rollout:generate")
    allocator = variance_allocator(n)
    counts = torch.full((len(problems),), rollouts_per_prompt, dtype=torch.long)
    prompts = [task.prompt_text(p, tokenizer) for p in problems]
    rollouts = generate(model, tokenizer, prompts, counts=counts, max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0,
                        seed=seed, max_batch_size=512)
    rewards = score(task, problems, rollouts)[0]  # (rewards, rules[, faults]): also the baseline tree's score (bench f)
    successes = torch.zeros(len(problems)).index_add_(0, rollouts.prompt_index, (rewards > 0).float())
    allocator.update([p.id for p in problems], successes=successes, attempts=counts.float())
    return allocator, prompts


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
