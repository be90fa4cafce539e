"""The only module that talks to W&B and rich: metrics.jsonl, W&B runs, and what the terminal shows."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from rich.columns import Columns
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from dynamo_cli.allocation.maths import bernoulli_variance
from dynamo_cli.config.logger import LoggerConfig
from dynamo_cli.errors import warn
from dynamo_cli.runtime import atomic


def make_console(cfg: LoggerConfig, *, quiet: bool = False) -> Console:
    """Rich on a terminal, plain lines when stdout is not a TTY (CI, pipes) unless told otherwise.
    `quiet`: prints nothing (every rank but 0 of a multi-process run)."""
    if quiet:
        return Console(quiet=True)
    if cfg.console == "rich":
        return Console(force_terminal=True)
    if cfg.console == "plain":
        return Console(force_terminal=False, no_color=True, width=200)
    return Console() if sys.stdout.isatty() else Console(force_terminal=False, no_color=True, width=200)


def truncate_jsonl(path: Path, *, max_step: int) -> None:
    """Keep the records of steps <= max_step (and drop a line cut short by a crash)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= max_step:
            kept.append(line)
    atomic.write_text(path, "".join(line + "\n" for line in kept))


def write_json_atomically(path: Path, value: Any) -> None:
    """Results files (eval.json) are replaced whole or not at all: a crash never leaves half a file."""
    atomic.write_text(path, json.dumps(value, indent=1))


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Tracker:
    """Writes one JSON object per logged step to `metrics.jsonl` and mirrors it to W&B.

    metrics.jsonl is written first and never depends on W&B. W&B failing is never fatal: `logger.mode=online` that
    cannot start (no network, no key) falls back to an offline run in the run dir, and offline failing too to
    none; an error mid-run switches W&B off. Each case prints one warning."""

    def __init__(self, *, run_dir: Path, cfg: LoggerConfig, config: dict, job_type: str,
                 resume_step: Optional[int] = None, enabled: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled  # False on non-zero ranks: one process writes
        self.run = None
        if not enabled:
            return
        if resume_step is not None:
            truncate_jsonl(self.path, max_step=resume_step)  # those steps are about to be logged again
        if cfg.name == "wandb" and cfg.mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = start_wandb(cfg, run_dir=Path(run_dir), job_type=job_type, config=config)

    def log(self, metrics: dict[str, Any], *, step: int) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3)}
        record.update({k: _jsonable(v) for k, v in metrics.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.run is not None:
            self._mirror(lambda run: run.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=step))

    def _mirror(self, call) -> None:
        """`call(run)` on the W&B run; an error switches W&B off for the rest of the run (one warning)."""
        try:
            call(self.run)
        except Exception as error:  # noqa: BLE001 - whatever W&B raises, metrics.jsonl carries on
            warn(f"W&B failed mid-run ({_first_line(error)}): W&B is off for the rest of this run; "
                 f"metrics.jsonl keeps every step ({self.path})")
            self.run = None

    def log_distributions(self, distributions: dict[str, torch.Tensor], *, step: int) -> None:
        """Histograms (allocation sizes, β_comp, β_stab, |ΔH|) go to W&B; metrics.jsonl keeps quantiles."""
        if not self.enabled or not distributions:
            return
        if self.run is not None:
            import wandb

            self._mirror(lambda run: run.log({k: wandb.Histogram(v.detach().float().cpu().numpy())
                                              for k, v in distributions.items() if v.numel()}, step=step))

    def log_completions(self, rows: list[dict], *, step: int) -> None:
        """A sample of the step's rollouts (rows with rollouts.jsonl's keys) as the W&B table `rollouts/completions`, one per
        logged step, so anyone can read what earns the reward. Multi-turn `turns` go in as JSON text."""
        if not self.enabled or not rows or self.run is None:
            return
        import wandb

        columns = list(rows[0])
        data = [[json.dumps(row[k]) if k == "turns" else row[k] for k in columns] for row in rows]
        self._mirror(lambda run: run.log({"rollouts/completions": wandb.Table(columns=columns, data=data)}, step=step))

    def summary(self, values: dict[str, Any]) -> None:
        def write(run) -> None:
            for k, v in values.items():
                run.summary[k] = _jsonable(v)

        if self.run is not None:
            self._mirror(write)

    def close(self) -> None:
        if self.run is not None:
            self._mirror(lambda run: run.finish())
            self.run = None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def start_wandb(cfg: LoggerConfig, *, run_dir: Path, job_type: str, config: dict):
    """The W&B run, in `cfg.mode`; if that fails, offline; if that fails too, None (W&B off). One warning."""
    import wandb

    def init(mode: str):
        return wandb.init(project=cfg.project, entity=cfg.entity, group=cfg.group, tags=list(cfg.tags) or None,
                          mode=mode, dir=str(run_dir), name=run_dir.name, job_type=job_type, config=config,
                          settings=wandb.Settings(console="off", silent=True))

    try:
        return init(cfg.mode)
    except Exception as error:  # noqa: BLE001 - no network, no API key, a W&B bug: never fatal
        first = error
    run, fallback = None, "W&B is off (metrics.jsonl only)"
    if cfg.mode != "offline":
        try:
            run, fallback = init("offline"), f"logging offline to {run_dir / 'wandb'} (`wandb sync` uploads it later)"
        except Exception:  # noqa: BLE001
            run = None
    warn(f"W&B logger.mode={cfg.mode} failed to start ({_first_line(first)}): {fallback}")
    return run


def quantiles(name: str, values: torch.Tensor) -> dict[str, float]:
    """p10/p50/p90 of a distribution, so metrics.jsonl carries its shape without W&B."""
    if values.numel() == 0:
        return {}
    q = torch.quantile(values.detach().float().flatten()[:1_000_000], torch.tensor([0.1, 0.5, 0.9]))
    return {f"{name}_p10": q[0].item(), f"{name}_p50": q[1].item(), f"{name}_p90": q[2].item()}


def format_metrics(metrics: dict[str, Any], keys: list[str]) -> str:
    parts = []
    for key in keys:
        if key in metrics and metrics[key] is not None:
            value = metrics[key]
            parts.append(f"{key.split('/')[-1]}={value:.4g}" if isinstance(value, float) else f"{key.split('/')[-1]}={value}")
    return " ".join(parts)


# ------------------------------------------------------------------------------------- SFT / plain
class StepProgress:
    """A rich progress bar (or one plain line per logged step) with a few live metrics."""

    def __init__(self, console: Console, *, total: int, description: str, start: int = 0):
        self.console = console
        self.total = total
        self.description = description
        self.progress = None
        if console.is_terminal:
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                                     TimeRemainingColumn(), console=console)
            self.task = self.progress.add_task(description, total=total, completed=start, info="")

    def __enter__(self) -> "StepProgress":
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, step: int, info: str, *, log_line: bool) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, info=info)
        elif log_line:
            self.console.print(f"{self.description} step {step}/{self.total} {info}", markup=False, highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------- RL
@dataclass
class BudgetRow:
    """One prompt of the step, as the live rollout-budget table shows it."""

    prompt_id: str
    snippet: str
    attempts: float  # lifetime rollouts (after this step)
    success_rate: float  # lifetime
    variance: float  # unbiased Bernoulli variance of the lifetime history
    allocated: int  # rollouts this step
    successes: int  # successes this step


def budget_rows(allocator, problems, counts: torch.Tensor, successes: torch.Tensor) -> list[BudgetRow]:
    """The live table's rows: each drawn prompt's lifetime history (from the allocator) and this step's budget."""
    ids = [p.id for p in problems]
    lifetime_successes, lifetime_attempts = allocator.history(ids)
    variance = bernoulli_variance(successes=lifetime_successes, attempts=lifetime_attempts)
    rate = lifetime_successes / lifetime_attempts.clamp(min=1)
    return [BudgetRow(prompt_id=p.id, snippet=p.question, attempts=float(lifetime_attempts[i]), success_rate=float(rate[i]),
                      variance=float(variance[i]), allocated=int(counts[i]), successes=int(successes[i]))
            for i, p in enumerate(problems)]


STEP_KEYS = [
    ("rollout/reward_mean", "reward mean"), ("rollout/pass_rate", "pass rate (any correct)"),
    ("rollout/zero_signal_frac", "zero-signal frac"), ("train/loss", "loss"), ("train/clip_frac", "clip frac"),
    ("train/entropy", "entropy"), ("train/kl_ref", "KL to ref"), ("train/grad_norm", "grad norm"),
    ("train/value_loss", "value loss"), ("train/critic_grad_norm", "critic grad norm"),  # with a critic only
    ("mod/beta_comp_mean", "β_comp mean"), ("mod/beta_stab_mean", "β_stab mean"),
    ("eval/greedy_pass1", "eval greedy pass@1"), ("time/tokens_per_s", "gen tokens/s"),
    ("time/generate_s", "s generate"), ("time/score_s", "s score+stats"), ("time/update_s", "s update"),
    ("time/step_s", "s step"),
]


def budget_table(rows: list[BudgetRow], *, top: int, coverage: float | None = None) -> Table:
    """`coverage`: alloc/history_coverage, the share of this step's prompts with >= g0 lifetime attempts."""
    title = "rollout budget (this step)" + ("" if coverage is None else f", history coverage {coverage:.0%}")
    table = Table(title=title, expand=False, show_lines=False)
    for name, justify in (("prompt", "left"), ("snippet", "left"), ("attempts", "right"), ("success", "right"),
                          ("var", "right"), ("n now", "right"), ("ok now", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    ordered = sorted(rows, key=lambda r: (-r.allocated, r.prompt_id))
    for r in ordered[:top]:
        table.add_row(r.prompt_id[-24:], r.snippet[:18], f"{r.attempts:.0f}", f"{r.success_rate:.2f}",
                      f"{r.variance:.3f}", str(r.allocated), str(r.successes))
    rest = ordered[top:]
    if rest:
        table.add_row(f"… {len(rest)} more", "", f"{sum(r.attempts for r in rest):.0f}",
                      f"{sum(r.success_rate for r in rest) / len(rest):.2f}", f"{sum(r.variance for r in rest) / len(rest):.3f}",
                      str(sum(r.allocated for r in rest)), str(sum(r.successes for r in rest)), style="dim")
    table.add_row("all", f"{len(rows)} prompts", f"{sum(r.attempts for r in rows):.0f}",
                  f"{sum(r.success_rate for r in rows) / max(len(rows), 1):.2f}",
                  f"{sum(r.variance for r in rows) / max(len(rows), 1):.3f}",
                  str(sum(r.allocated for r in rows)), str(sum(r.successes for r in rows)), style="bold")
    return table


def one_line(text: str, width: int) -> str:
    """A completion on one line: newlines as ⏎, cut to `width` characters with a closing …."""
    flat = text.replace("\n", "⏎")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def completions_table(extremes: list[tuple[str, dict]], *, width: int) -> Table:
    """The step's best and worst completion (rollouts.best_and_worst): prompt, reward, rule, advantage and the text, shown
    as written (Text cells: a completion's brackets are not rich markup)."""
    table = Table(title="completions (this step)", expand=False)
    for name, justify in (("", "left"), ("prompt", "left"), ("reward", "right"), ("rule", "left"), ("adv", "right"),
                          ("completion", "left")):
        table.add_column(name, justify=justify, no_wrap=True)
    for label, row in extremes:
        table.add_row(label, Text(row["prompt_id"][-24:]), f"{row['reward']:.2f}", row["rule"], f"{row['advantage']:+.2f}",
                      Text(one_line(row["completion"], width)))
    return table


def metrics_table(metrics: dict[str, Any]) -> Table:
    table = Table(title="step metrics", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in STEP_KEYS:
        if metrics.get(key) is not None:
            table.add_row(label, f"{metrics[key]:.4g}")
    return table


class TrainView:
    """rich Live: the rollout-budget table beside the step metrics, the step's best and worst completion under them, a
    progress bar with ETA (and eval's, while it runs). Without a terminal: one plain line per step, and the best and worst
    completion every `completions_every` steps (0: never)."""

    PLAIN_KEYS = ["rollout/reward_mean", "rollout/zero_signal_frac", "alloc/max", "alloc/min", "alloc/history_coverage",
                  "train/loss", "train/clip_frac", "train/entropy", "train/grad_norm", "eval/greedy_pass1", "time/tokens_per_s", "time/step_s"]

    COMPLETION_WIDTH = 100  # characters of a completion the live view shows (the plain lines: twice as many)

    def __init__(self, console: Console, *, total: int, start: int, rows: int, completions_every: int = 0):
        self.console = console
        self.rows = rows
        self.completions_every = completions_every
        self.progress = StepProgress(console, total=total, description="train", start=start)
        self.live = None
        if console.is_terminal and self.progress.progress is not None:
            self.live = Live(self._render([], {}, []), console=console, refresh_per_second=4, transient=False)

    def _render(self, rows: list[BudgetRow], metrics: dict[str, Any], completions: list[tuple[str, dict]]):
        table = budget_table(rows, top=self.rows, coverage=metrics.get("alloc/history_coverage"))
        shown = [completions_table(completions, width=self.COMPLETION_WIDTH)] if completions else []
        return Group(Columns([table, metrics_table(metrics)]), *shown, self.progress.progress)

    def __enter__(self) -> "TrainView":
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()

    def update(self, step: int, rows: list[BudgetRow], metrics: dict[str, Any], completions: list[tuple[str, dict]] = ()) -> None:
        """`completions`: the step's best and worst rollout rows (rollouts.best_and_worst)."""
        if self.live is not None:
            self.progress.progress.update(self.progress.task, completed=step)
            self.live.update(self._render(rows, metrics, list(completions)))
            return
        self.console.print(f"train step {step}/{self.progress.total} {format_metrics(metrics, self.PLAIN_KEYS)}",
                           markup=False, highlight=False, soft_wrap=True)
        if self.completions_every and step % self.completions_every == 0:
            for label, row in completions:
                self.console.print(f"  {label}: {row['prompt_id']} reward={row['reward']:.2f} rule={row['rule']} "
                                   f"adv={row['advantage']:+.2f} | {one_line(row['completion'], 2 * self.COMPLETION_WIDTH)}",
                                   markup=False, highlight=False, soft_wrap=True)

    def eval_progress(self) -> "EvalProgress":
        """Eval's progress while this view runs: one more bar in its display (rich shows one live display at a time)."""
        return EvalProgress(self.console, host=self.progress.progress)


class EvalProgress:
    """Eval's progress in sequences generated and judged (stages/evaluate.py calls it with done, total): a rich bar on a
    terminal, in `host` (a running Progress, e.g. the train view's) or its own; without a terminal a plain line at each
    quarter. A context manager: the bar goes when the eval ends."""

    def __init__(self, console: Console, *, host: Optional[Progress] = None, description: str = "eval"):
        self.console, self.host, self.description = console, host, description
        self.progress: Optional[Progress] = None
        self.task = None
        self.quarters = 0  # plain lines printed

    def __enter__(self) -> "EvalProgress":
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.console.is_terminal:
            if self.task is None:
                self.progress = self.host or Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                                      TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                                      console=self.console, transient=True)
                if self.host is None:
                    self.progress.start()
                self.task = self.progress.add_task(self.description, total=total, info="sequences")
            self.progress.update(self.task, completed=done, total=total)
            return
        quarters = 4 * done // max(total, 1)
        if quarters > self.quarters:
            self.quarters = quarters
            self.console.print(f"{self.description}: {done}/{total} sequences generated and judged", markup=False, highlight=False)

    def __exit__(self, *exc) -> None:
        if self.task is not None:
            if self.host is None:
                self.progress.stop()
            else:
                self.progress.remove_task(self.task)
        self.progress, self.task, self.quarters = None, None, 0


# ----------------------------------------------------------------------------------------- eval
def eval_table(result: dict[str, Any], *, title: str) -> Table:
    """Overall and per-level rows: problems, greedy accuracy, mean@n, pass@k."""
    overall = result["overall"]
    ks = sorted(int(k.split("@")[1]) for k in overall if k.startswith("pass@"))
    table = Table(title=title)
    for name in ["level", "problems", "greedy", *([f"mean@{result['n_samples']}"] if result["n_samples"] else []), *[f"pass@{k}" for k in ks]]:
        table.add_column(name, justify="right" if name != "level" else "left")
    for level, stats in [*sorted(result["levels"].items()), ("all", overall)]:
        cells = [level, str(stats["problems"]), f"{stats['greedy']:.3f}"]
        if result["n_samples"]:
            cells.append(f"{stats['mean@n']:.3f}")
        cells += [f"{stats[f'pass@{k}']:.3f}" for k in ks]
        table.add_row(*cells, style="bold" if level == "all" else None)
    return table


# ---------------------------------------------------------------------------------------- sweep
def results_table(*, title: str, columns: list[str], rows: list[list[str]]) -> Table:
    """Pre-formatted cells (a sweep's per-method summary), first column left-aligned, the rest right."""
    table = Table(title=title)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    for cells in rows:
        table.add_row(*cells)
    return table
