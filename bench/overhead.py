"""Bench c: what allocation and modulation cost.

1. A short `dynamo train` run (variance allocation + DynaMO modulation, the ablation's budget) and, from its
   metrics.jsonl, (time/alloc_s + time/modulate_s) / time/step_s summed over the steps after the first.
2. The two ways modulation reads the current policy, interleaved in one run of the bench, `--repeats` times each:
   modulator.scope=mini_batch (a no-grad forward over each mini-batch after the first, before its loss) against
   modulator.scope=micro_batch (each micro-batch shaped from its own training forward: no extra forward). Median step
   time of each, their ratio, and each one's allocation + modulation share of a step.
3. VarianceAllocator.allocate for 10^5 and 10^6 prompts with random success histories: seconds, µs per
   prompt, the 10^6 / 10^5 time ratio (10 = linear), and the share spent in the pure tensor maths
   (priority + water-filling) versus looking up each prompt's history by id.

    python -m bench.overhead [--checkpoint DIR] [--steps S] [--repeats R] [--quick]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import BenchResult, checkpoint, dynamo, print_result, shown


def train_overhead(ckpt: Path, *, steps: int, quick: bool, overrides: tuple[str, ...] = ()) -> dict[str, float]:
    """Fractions of step time from a short train run; the first step (warm-up: allocator all-unexplored,
    first forward passes) is left out when there are later ones."""
    size = (["trainer.prompts_per_step=8", "rollout.n=4", "task.num_train=500"] if quick
            else ["trainer.prompts_per_step=64", "rollout.n=8"])
    with tempfile.TemporaryDirectory() as tmp:
        dynamo("train", "allocator=variance", "modulator=dynamo", f"model.path={ckpt}", f"hydra.run.dir={tmp}",
               f"trainer.steps={steps}", "trainer.eval_every=0", "trainer.save_every=0", "eval.max_problems=8",
               "eval.n_samples=0", "logger=none", *size, *overrides)
        records = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    steps_ = [r for r in records if "time/step_s" in r]
    kept = steps_[1:] if len(steps_) > 1 else steps_
    total = {k: sum(r[k] for r in kept) for k in ("time/alloc_s", "time/modulate_s", "time/step_s", "time/generate_s", "time/update_s")}
    return {"steps": len(kept), "step_s": total["time/step_s"] / len(kept),
            "alloc": total["time/alloc_s"] / total["time/step_s"], "modulate": total["time/modulate_s"] / total["time/step_s"],
            "generate": total["time/generate_s"] / total["time/step_s"], "update": total["time/update_s"] / total["time/step_s"]}


# the two modulation paths; one explicit micro-batch size for both (micro_batch scope needs one; auto would follow memory)
PATHS = {"mini_batch": ("modulator.scope=mini_batch", "algorithm.micro_batch_size=32"),
         "micro_batch": ("modulator.scope=micro_batch", "algorithm.micro_batch_size=32")}


def modulation_paths(ckpt: Path, *, steps: int, repeats: int, quick: bool) -> dict[str, dict[str, float]]:
    """Each modulation path's median over `repeats` runs, interleaved (A B A B ...: load on the machine falls on both):
    step_s (mean step after the first) and share (allocation + modulation over step time)."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in PATHS}
    for _ in range(repeats):
        for name, overrides in PATHS.items():
            runs[name].append(train_overhead(ckpt, steps=steps, quick=quick, overrides=overrides))
    return {name: {"step_s": statistics.median(r["step_s"] for r in rows),
                   "share": statistics.median(r["alloc"] + r["modulate"] for r in rows),
                   "modulate": statistics.median(r["modulate"] for r in rows)} for name, rows in runs.items()}


def allocation_time(num_prompts: int, *, seed: int = 0, repeats: int = 3, prior: str = "none") -> dict[str, float]:
    """Best-of-`repeats` seconds of allocate() over num_prompts prompts (6 tags), and of its pure tensor part."""
    from dynamo_cli.allocation.base import ALLOCATORS
    from dynamo_cli.allocation.maths import exploration_need
    from dynamo_cli.allocation.variance import VarianceAllocatorConfig, allocate_rollouts, shrunk_estimates, variance_priority

    a = VarianceAllocatorConfig(prior=prior)
    allocator = ALLOCATORS.build(a, n=8)
    g = torch.Generator().manual_seed(seed)
    ids = [f"p{i}" for i in range(num_prompts)]
    tags = [f"L{i % 6 + 1}" for i in range(num_prompts)]
    attempts = torch.randint(0, 41, (num_prompts,), generator=g).double()  # 0..40 lifetime rollouts: some unexplored
    successes = torch.binomial(attempts, torch.rand(num_prompts, generator=g).double(), generator=g)
    allocator.update(ids, successes=successes, attempts=attempts, tags=tags)
    full, pure = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        counts = allocator.allocate(ids, tags=tags).counts
        full.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        zeros = torch.zeros(num_prompts, dtype=torch.float64)
        acc, variance = shrunk_estimates(successes=successes, attempts=attempts, prior_rate=zeros, prior_variance=zeros,
                                         prior_strength=zeros)
        priority = variance_priority(acc=acc, variance=variance, unknown=attempts < a.explore_min_attempts,
                                     mastered_threshold=a.mastered_threshold, floor=a.floor,
                                     unexplored_priority=a.unexplored_priority, weight=a.weight)
        explore_need = exploration_need(attempts=attempts, explore_min_attempts=a.explore_min_attempts)
        allocate_rollouts(priority=priority, explore_need=explore_need, budget=8 * num_prompts, n_min=a.n_min, n_max=a.n_max)
        pure.append(time.perf_counter() - t0)
    assert int(counts.sum()) == 8 * num_prompts
    return {"seconds": min(full), "pure_seconds": min(pure)}


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="SFT checkpoint dir (default: the latest under outputs/, else train one)")
    parser.add_argument("--steps", type=int, help="train steps (default 8; quick 2)")
    parser.add_argument("--repeats", type=int, help="runs of each modulation path, interleaved (default 3; quick 1)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds (for tests)")
    args = parser.parse_args(argv)
    ckpt, how = checkpoint(args.checkpoint, quick=args.quick)
    steps = args.steps or (2 if args.quick else 8)
    train = train_overhead(ckpt, steps=steps, quick=args.quick)
    repeats = args.repeats or (1 if args.quick else 3)
    paths = modulation_paths(ckpt, steps=steps, repeats=repeats, quick=args.quick)
    sizes = (10**3, 10**4) if args.quick else (10**5, 10**6)
    alloc = {n: allocation_time(n) for n in sizes}
    small, large = sizes
    scaling = alloc[large]["seconds"] / alloc[small]["seconds"]
    command = "python -m bench.overhead" + (" --quick" if args.quick else "")
    budget = "8 prompts × 4" if args.quick else "64 prompts × 8 (the ablation's budget)"
    lines = [
        (f"A `dynamo train allocator=variance modulator=dynamo` run of {steps} steps, {budget} rollouts per step, from "
        f"`{shown(ckpt)}` ({how}); fractions of step time over its last {train['steps']} steps (mean step {train['step_s']:.2f} s):"), "",
        "| part of a step | fraction |", "|---|--:|",
        f"| allocation (allocate + update) | {train['alloc']:.4f} |", f"| modulation (β_comp, β_stab) | {train['modulate']:.4f} |",
        f"| generation | {train['generate']:.3f} |", f"| policy update | {train['update']:.3f} |", "",
        f"**Allocator + modulator share of step time: {train['alloc'] + train['modulate']:.4f}**.", "",
        (f"The two ways modulation reads the current policy, {repeats} run(s) of each, interleaved, median "
         "(`modulator.scope`; both at `algorithm.micro_batch_size=32`):"), "",
        "| path | step s | allocation + modulation share | modulation share |", "|---|--:|--:|--:|",
        *[f"| `{name}`{' (no extra forward)' if name == 'micro_batch' else ' (a no-grad forward per later mini-batch)'} | "
          f"{p['step_s']:.3f} | {p['share']:.4f} | {p['modulate']:.4f} |" for name, p in paths.items()], "",
        f"**micro_batch / mini_batch step time: {paths['micro_batch']['step_s'] / paths['mini_batch']['step_s']:.3f}**.", "",
        "| prompts | allocate() s | µs per prompt | share in the pure tensor maths |", "|--:|--:|--:|--:|",
        *[f"| {n:,} | {alloc[n]['seconds']:.3f} | {1e6 * alloc[n]['seconds'] / n:.2f} | {alloc[n]['pure_seconds'] / alloc[n]['seconds']:.2f} |"
          for n in sizes], "",
        (f"**allocate() time ratio {large:,} / {small:,} prompts: {scaling:.2f}** (10 = linear). The rest of the time "
        "beyond the pure tensor part is the per-id history lookup (a Python dict)."),
    ]
    result = BenchResult(name="c. Overhead", command=command, lines=lines,
                         ratios={"alloc_plus_modulate_over_step": train["alloc"] + train["modulate"],
                                 "micro_batch_over_mini_batch_step": paths["micro_batch"]["step_s"] / paths["mini_batch"]["step_s"],
                                 "micro_batch_alloc_plus_modulate_over_step": paths["micro_batch"]["share"],
                                 f"allocate_time_{large}_over_{small}": scaling})
    print_result(result)
    return result


if __name__ == "__main__":
    main()
