"""Per-method tables over finished seeds: the summary rows, their cells, markdown and CSV, and the per-level table."""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dynamo_cli.report.labels import group_by_method
from dynamo_cli.report.runs import Run
from dynamo_cli.report.stats import Interval, mean_ci
from dynamo_cli.runtime import atomic


@dataclass
class MethodSummary:
    method: str
    seeds: list[int]  # seeds that finished
    expected: int  # runs of this method in the sweep (finished or not)
    greedy: Interval
    pass1: Interval
    pass_k: Interval
    k: int | None  # the largest k of pass@k in the runs' eval.json
    rollouts: Interval
    tokens: Interval
    seconds: Interval


def largest_k(final: dict) -> int | None:
    ks = [int(key.split("@")[1]) for key in final if key.startswith("pass@")]
    return max(ks) if ks else None


def summarise(runs: Sequence[Run]) -> list[MethodSummary]:
    """One row per method over its finished runs (unfinished ones count in `expected` only)."""
    rows = []
    for method, members in group_by_method(runs).items():
        done = [r for r in members if r.finished]
        k = min((largest_k(r.final) for r in done if largest_k(r.final)), default=None)  # shared by every seed
        rows.append(MethodSummary(
            method=method, seeds=sorted(r.seed for r in done), expected=len(members),
            greedy=mean_ci([r.final["greedy"] for r in done]),
            pass1=mean_ci([r.final["pass@1"] for r in done if "pass@1" in r.final]),
            pass_k=mean_ci([r.final[f"pass@{k}"] for r in done]) if k else mean_ci([]), k=k,
            rollouts=mean_ci([r.rollouts for r in done]), tokens=mean_ci([r.tokens for r in done]),
            seconds=mean_ci([r.seconds for r in done])))
    return rows


def summary_columns(rows: Sequence[MethodSummary]) -> list[str]:
    k = next((r.k for r in rows if r.k), None)
    return ["method", "seeds done", "greedy pass@1", "pass@1 (sampled)", f"pass@{k}" if k else "pass@k",
            "rollouts", "tokens", "train s"]


def summary_cells(row: MethodSummary) -> list[str]:
    return [row.method, f"{len(row.seeds)}/{row.expected}", row.greedy.format(), row.pass1.format(), row.pass_k.format(),
            f"{row.rollouts.mean:,.0f}" if row.rollouts.n else "–", row.tokens.format(0) if row.tokens.n else "–",
            row.seconds.format(0) if row.seconds.n else "–"]


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    aligns = ["---"] + ["--:"] * (len(columns) - 1)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def write_summary_csv(path: Path, rows: Sequence[MethodSummary]) -> None:
    """Machine-readable: mean and 95% half-width in separate columns (empty when there is no interval)."""
    def pair(interval: Interval) -> list:
        return [None if interval.n == 0 else interval.mean, interval.half_width]

    header = ["method", "seeds_done", "runs", "seeds"]
    for name in ("greedy_pass1", "pass1", "pass_k", "rollouts", "tokens", "train_seconds"):
        header += [f"{name}_mean", f"{name}_ci95"]
    lines = [header + ["k"]]
    for r in rows:
        cells = [r.method, len(r.seeds), r.expected, " ".join(map(str, r.seeds))]
        for interval in (r.greedy, r.pass1, r.pass_k, r.rollouts, r.tokens, r.seconds):
            cells += pair(interval)
        lines.append(cells + [r.k])
    write_csv(path, lines)


def write_runs_csv(path: Path, runs: Sequence[Run]) -> None:
    """One row per run, finished or not: the raw numbers behind every mean."""
    keys = sorted({key for r in runs for key in r.final})
    lines = [["run", "method", "allocator", "modulator", "seed", "finished", "last_step", "steps",
              "rollouts", "tokens", "train_seconds", *keys]]
    for r in runs:
        lines.append([str(r.path), r.method, r.allocator, r.modulator, r.seed, r.finished, r.last_step, r.steps,
                      r.rollouts, r.tokens, round(r.seconds, 2), *[r.final.get(k) for k in keys]])
    write_csv(path, lines)


def write_csv(path: Path, lines: list[list]) -> None:
    """Rows as CSV, replaced whole or not at all (runtime/atomic.py)."""
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(lines)
    atomic.write_text(Path(path), buffer.getvalue())


def level_rows(runs: Sequence[Run], metric: str) -> tuple[list[str], list[list[str]]]:
    """Test metric per difficulty level: the start (step-0 eval) and each method's final mean over seeds.

    Where the gain (or loss) sits across levels is the first thing to read when methods do not separate.
    """
    final_key = "greedy" if metric == "greedy_pass1" else metric
    done = [r for r in runs if r.finished]
    levels = sorted({level for r in done for level in r.final_levels})
    rows = []
    start = [[p.metrics.get(f"{level}/{metric}") for r in done for p in r.evals if p.step == 0] for level in levels]
    if any(any(v is not None for v in values) for values in start):
        rows.append(["start (step 0)"] + [_mean_cell([v for v in values if v is not None]) for values in start])
    for method, members in group_by_method(done).items():
        rows.append([method] + [_mean_cell([r.final_levels[level][final_key] for r in members
                                            if final_key in r.final_levels.get(level, {})]) for level in levels])
    return ["", *levels], rows


def _mean_cell(values: Sequence[float]) -> str:
    return f"{sum(values) / len(values):.3f}" if values else "–"
