"""Bench b: rollouts and generated tokens needed to reach a target test pass@1, DynaMO vs uniform GRPO.

Reuses the train runs of the latest `dynamo sweep` (3 seeds per method in the ablation) instead of training
again: it reads their metrics.jsonl eval records. The budget of a seed is the rollouts (tokens) generated up
to its first eval at or above the target; the mean is over the seeds that reached it (the others are counted,
not averaged in), with a 95% Student-t interval. Target: `--target`, else 90% of the way from the starting
checkpoint's pass@1 to the better of the two methods' final means.

    python -m bench.sample_efficiency [--sweep-dir DIR] [--target T] [--metric pass@1|greedy_pass1]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.common import REPO, BenchResult, fmt, print_result
from dynamo_cli.report.runs import find_runs
from dynamo_cli.report.stats import Interval, mean_ci
from dynamo_cli.report.tables import markdown_table
from dynamo_cli.report.targets import TARGET_COLUMNS, default_target, first_reaching, rollouts_to_target, target_cells

METHODS = ("grpo", "dynamo")


def latest_sweep() -> Path | None:
    """The newest outputs/sweep/<date>/<time>-ablation/ that holds at least one train run (the ablation has both
    DynaMO and GRPO at one budget; a budget or baselines sweep does not)."""
    candidates = sorted((p for p in REPO.glob("outputs/sweep/*/*-ablation") if (p / "runs").is_dir()),
                        key=lambda p: p.stat().st_mtime)
    for sweep_dir in reversed(candidates):
        if find_runs(sweep_dir / "runs"):
            return sweep_dir
    return None


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(prog="python -m bench.sample_efficiency", description=__doc__.splitlines()[0])
    parser.add_argument("--sweep-dir", help="a sweep dir (with runs/) or any multirun dir; default: the latest under outputs/sweep")
    parser.add_argument("--target", type=float, help="test pass@1 to reach (default: 90%% of the best gain)")
    parser.add_argument("--metric", default="pass@1", choices=("pass@1", "greedy_pass1"))
    parser.add_argument("--quick", action="store_true", help="same work (it only reads files); accepted for symmetry")
    args = parser.parse_args(argv)
    command = "python -m bench.sample_efficiency" + (" --quick" if args.quick else "")
    sweep_dir = Path(args.sweep_dir) if args.sweep_dir else latest_sweep()
    if sweep_dir is None:
        result = BenchResult(name="b. Sample efficiency", command=command, ratios={"rollouts_to_target_dynamo_over_grpo": None},
                             lines=[("n/a: no sweep with train runs under outputs/sweep. Run `dynamo sweep sweep=ablation` "
                                    "(about 50 min on 2 CPU cores), then `make bench` again: this bench reuses its runs.")])
        print_result(result)
        return result
    runs_dir = sweep_dir / "runs" if (sweep_dir / "runs").is_dir() else sweep_dir
    runs = [r for r in find_runs(runs_dir) if r.method in METHODS]
    finished = [r for r in runs if r.finished]
    target = args.target if args.target is not None else default_target(finished, args.metric)
    rows = {r.method: r for r in rollouts_to_target(runs, metric=args.metric, target=target)} if target is not None else {}
    ratio = {}
    for unit in ("rollouts", "tokens"):
        a, b = (getattr(rows[m], unit) if m in rows else None for m in ("dynamo", "grpo"))
        ratio[unit] = a.mean / b.mean if a and b and a.n and b.n and b.mean > 0 else None
    paired = paired_ratios(runs, metric=args.metric, target=target) if target is not None else mean_ci([])
    shown = os.path.relpath(runs_dir, REPO) if runs_dir.resolve().is_relative_to(REPO) else str(runs_dir)
    counts = ", ".join(f"{sum(r.method == m for r in finished)} {m}" for m in METHODS)
    lines = [f"Reuses the train runs of `{shown}` (no new training): finished runs {counts}"
             + (f"; {len(runs) - len(finished)} unfinished, left out" if len(runs) > len(finished) else "") + "."]
    absent = [m for m in METHODS if not any(r.method == m for r in finished)]
    if absent:
        lines.append(f"No finished {' or '.join(absent)} run there, so no ratio.")
    if target is None:
        lines.append("n/a: no finished grpo or dynamo run in that directory.")
    else:
        how = "given with --target" if args.target is not None else "90% of the way from the start to the better final mean"
        lines += [f"Target test {args.metric} ≥ {target:.3f} ({how}).", "",
                  markdown_table(TARGET_COLUMNS, [target_cells(rows[m]) for m in METHODS if m in rows]), "",
                  (f"**Rollouts to target, dynamo / grpo: {fmt(ratio['rollouts'])}**; tokens to target, dynamo / grpo: "
                  f"{fmt(ratio['tokens'])}; per seed (seeds where both reached it), rollouts ratio {paired.format()}. "
                  "Below 1 means DynaMO needs less budget. Resolution is one eval interval; seeds that never reach the "
                  "target are not in the means (see `seeds reaching`).")]
    result = BenchResult(name="b. Sample efficiency", command=command, lines=lines,
                         ratios={"rollouts_to_target_dynamo_over_grpo": ratio["rollouts"],
                                 "tokens_to_target_dynamo_over_grpo": ratio["tokens"]})
    print_result(result)
    return result


def paired_ratios(runs, *, metric: str, target: float) -> Interval:
    """dynamo / grpo rollouts-to-target per seed (same seed: same prompt order), mean ± 95% CI."""
    hits = {}
    for run in runs:
        if run.finished:
            point = first_reaching(run, metric=metric, target=target)
            if point is not None and point.rollouts > 0:
                hits[(run.method, run.seed)] = point.rollouts
    seeds = sorted({s for (m, s) in hits if m == "dynamo"} & {s for (m, s) in hits if m == "grpo"})
    return mean_ci([hits[("dynamo", s)] / hits[("grpo", s)] for s in seeds])


if __name__ == "__main__":
    main()
