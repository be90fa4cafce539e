"""Bench f on the real model: SmolLM2-135M with LoRA on CPU, this tree against the baseline commit, side by side.

The same `dynamo train` (GRPO, chat format, a few small steps) runs on the baseline tree (bench.speed's export, default
3983b68: main before the speed work) and on this tree, alternating baseline, new, baseline, new, ... so drift on a
shared machine hits both alike. Reported per tree, the median over the steps after the first, then over repeats:
step time, generation time and generation tokens/s (completion tokens generated / time/generate_s), and the update
time. Needs the converted model (`make real-model`); without it, it says so and exits 2.

    python -m bench.real_model_speed [--baseline REF] [--repeats R] [--steps S] [--prompts P] [--n N] [--tokens T]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import BenchResult, print_result
from bench.speed import BASELINE, export, in_tree, ratio


def model_dir() -> Path | None:
    """The converted SmolLM2-135M checkpoint that `make real-model` leaves in the cache, if it is there."""
    path = Path.home() / ".cache" / "dynamo" / "models" / "smollm2-135m"
    return path if (path / "config.json").is_file() else None


def train_run(tree: Path, *, steps: int, prompts: int, n: int, tokens: int) -> dict:
    """Medians over the steps after the first of one `dynamo train model=smollm2-135m` run on `tree`'s code."""
    with tempfile.TemporaryDirectory() as tmp:
        in_tree(tree, ["-m", "dynamo_cli", "train", "model=smollm2-135m", "model.lora.enabled=true", "task=math", "task.format=chat",
                       f"task.max_new_tokens={tokens}", "allocator=uniform", "modulator=none", f"trainer.prompts_per_step={prompts}",
                       f"rollout.n={n}", f"algorithm.micro_batch_size={prompts * n}", f"trainer.steps={steps}",
                       "trainer.eval_every=0", "trainer.save_every=0", "eval.max_problems=1", "eval.n_samples=0",
                       "logger=none", "device=cpu", f"hydra.run.dir={tmp}"], cwd=tree)
        records = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    kept = [r for r in records if "time/step_s" in r][1:]
    tokens_generated = [r["rollout/response_length"] * r["rollout/count"] for r in kept]
    return {"step_s": statistics.median(r["time/step_s"] for r in kept),
            "generate_s": statistics.median(r["time/generate_s"] for r in kept),
            "update_s": statistics.median(r["time/update_s"] for r in kept),
            "generate_tokens_per_s": statistics.median(t / r["time/generate_s"] for t, r in zip(tokens_generated, kept, strict=True))}


def main(argv: list[str] | None = None) -> BenchResult | None:
    parser = argparse.ArgumentParser(prog="python -m bench.real_model_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help=f"git ref measured against (default {BASELINE})")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per tree, median reported (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="train steps per run, the first left out (default 3)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (default 4)")
    parser.add_argument("--n", type=int, default=4, help="rollouts per prompt (default 4)")
    parser.add_argument("--tokens", type=int, default=48, help="max new tokens per completion (default 48)")
    args = parser.parse_args(argv)
    if model_dir() is None:
        print("bench.real_model_speed: the SmolLM2-135M checkpoint is not converted yet: run `make real-model` first", file=sys.stderr)
        raise SystemExit(2)
    keys = ("step_s", "generate_s", "update_s", "generate_tokens_per_s")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        commit = export(args.baseline, base)
        trees = {"baseline": base, "new": Path(__file__).resolve().parents[1]}
        runs = {t: [] for t in trees}
        for _ in range(args.repeats):
            for name, tree in trees.items():  # interleaved
                runs[name].append(train_run(tree, steps=args.steps, prompts=args.prompts, n=args.n, tokens=args.tokens))
    med = {(t, k): statistics.median(r[k] for r in runs[t]) for t in trees for k in keys}
    labels = {"step_s": "step, s", "generate_s": "generation, s", "update_s": "update, s",
              "generate_tokens_per_s": "generation, completion tokens/s"}
    command = "python -m bench.real_model_speed"
    lines = [
        (f"SmolLM2-135M-Instruct (fp32, LoRA r 16 on every linear projection: the defaults), `task=math task.format=chat`, GRPO, "
         f"{args.prompts} prompts × {args.n} rollouts a step, ≤ {args.tokens} new tokens, 4 optimiser updates a step (the train defaults' mini-batches); baseline "
         f"`{args.baseline}` = {commit} against this tree, {args.repeats} interleaved run(s) each of {args.steps} steps, the "
         "first left out; medians; CPU."), "",
        "| measurement | baseline | new | new / baseline |", "|---|--:|--:|--:|",
        *[f"| {labels[k]} | {med['baseline', k]:.3f} | {med['new', k]:.3f} | {ratio(med['new', k], med['baseline', k]):.3f} |"
          for k in keys],
    ]
    ratios = {f"real_{k}_new_over_baseline": ratio(med["new", k], med["baseline", k]) for k in keys}
    result = BenchResult(name="f'. Speed on the real model (SmolLM2-135M, LoRA)", command=command, lines=lines, ratios=ratios)
    print_result(result)
    return result


if __name__ == "__main__":
    main()
