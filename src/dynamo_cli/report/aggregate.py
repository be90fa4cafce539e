"""Turn a sweep's train runs into evidence: per-method tables with 95% CIs, learning curves, rollouts-to-target.

Everything here reads run directories (`config.yaml`, `metrics.jsonl`, `eval.json`) and returns plain
dataclasses, or writes files (markdown, CSV, PNG, the generated `docs/results.md`). Nothing runs a model.

Statistics: a method's value is the mean over its seeds, with a 95% Student-t interval
mean ± t_{0.975, n-1} · s / √n (s the sample standard deviation). With 3 seeds t = 4.303, so intervals are
wide on purpose: 3 seeds cannot support strong claims, and the page says so rather than hiding it.
A run without `eval.json` did not finish; it is listed on its own and never enters a mean.
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from dynamo_cli.runtime import atomic

# (allocator, modulator) -> the method's name in the ablation; other pairs are called "<allocator>+<modulator>"
METHOD_LABELS = {
    ("uniform", "none"): "grpo",
    ("variance", "none"): "allocation only",
    ("uniform", "dynamo"): "modulation only",
    ("variance", "dynamo"): "dynamo",
}
BASELINE = "grpo"
X_AXES = {"rollouts": "rollouts generated", "tokens": "completion tokens generated", "seconds": "train wall-clock seconds (eval excluded)"}


def method_label(allocator: str, modulator: str) -> str:
    return METHOD_LABELS.get((allocator, modulator), f"{allocator}+{modulator}")


def method_order(label: str) -> tuple[int, str]:
    """The ablation's methods first, in the order of the paper's table; anything else after, by name."""
    known = list(METHOD_LABELS.values())
    return (known.index(label), "") if label in known else (len(known), label)


# ------------------------------------------------------------------------------------ statistics
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes §6.4)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):  # the continued fraction converges fast on this side
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1 - math.exp(log_front) * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student-t CDF: F(t) = 1 - I_{df/(df+t²)}(df/2, 1/2) / 2 for t >= 0, by symmetry below."""
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse Student-t CDF by bisection (no scipy needed): t_{0.975, 2} = 4.303."""
    if not 0 < p < 1 or df <= 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


@dataclass
class Interval:
    """A mean over seeds with its 95% half-width (None with fewer than two values: no interval exists)."""

    mean: float
    half_width: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def overlaps(self, other: Interval) -> bool | None:
        if self.half_width is None or other.half_width is None:
            return None
        return self.low <= other.high and other.low <= self.high

    def excludes_zero(self) -> bool | None:
        return None if self.half_width is None else (self.low > 0 or self.high < 0)

    def format(self, digits: int = 3) -> str:
        if self.n == 0:
            return "–"
        if self.half_width is None:
            return f"{self.mean:,.{digits}f} (CI n/a)"
        return f"{self.mean:,.{digits}f} ± {self.half_width:,.{digits}f}"


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """mean ± t_{(1+level)/2, n-1} · s / √n over the values (seeds). Known values: [1, 2, 3] -> 2 ± 2.484."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return Interval(mean=float("nan"), half_width=None, n=0)
    mean = sum(values) / n
    if n == 1:
        return Interval(mean=mean, half_width=None, n=1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean=mean, half_width=t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n), n=n)


# ------------------------------------------------------------------------------------------ runs
@dataclass
class EvalPoint:
    """One eval record of metrics.jsonl: where the run stood (budget spent) and what it scored."""

    step: int
    rollouts: int
    tokens: int
    seconds: float
    metrics: dict[str, float]  # eval/... keys without the prefix: greedy_pass1, pass@1, L3/pass@1, ...


@dataclass
class Run:
    path: Path
    allocator: str
    modulator: str
    seed: int
    steps: int  # trainer.steps the run was configured for
    finished: bool  # eval.json exists: the run reached its end
    final: dict[str, float] = field(default_factory=dict)  # eval.json "overall": greedy, mean@n, pass@k
    final_levels: dict[str, dict[str, float]] = field(default_factory=dict)  # eval.json "levels"
    config: dict = field(default_factory=dict)  # the run's resolved config
    evals: list[EvalPoint] = field(default_factory=list)
    last_step: int = 0  # last step logged in metrics.jsonl
    rollouts: int = 0  # rollouts generated over the run
    tokens: int = 0  # completion tokens generated over the run
    seconds: float = 0.0  # summed step time (eval excluded)
    budget: str = ""  # "n=2": set by find_runs when the runs' budgets differ, so each budget is its own group
    overrides: dict[str, str] = field(default_factory=dict)  # the job's command-line overrides (.hydra/overrides.yaml)
    label: str | None = None  # the method's name from what varies across the sweep (`label_by_what_varies`)

    @property
    def method(self) -> str:
        return (self.label or method_label(self.allocator, self.modulator)) + (f" @ {self.budget}" if self.budget else "")

    def final_metric(self, metric: str) -> float | None:
        """metric as named in eval records (greedy_pass1, pass@1, pass@4, mean@n) from eval.json."""
        return self.final.get("greedy" if metric == "greedy_pass1" else metric)


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
    return records


def _run_config(path: Path) -> dict | None:
    """The run's resolved config.yaml; Hydra's own .hydra/config.yaml if the run died before writing it."""
    for candidate in (path / "config.yaml", path / ".hydra" / "config.yaml"):
        if candidate.is_file():
            return yaml.safe_load(candidate.read_text())
    return None


def is_train_run(path: Path) -> bool:
    """A `dynamo train` run dir: its config names an allocator and a modulator (sft/eval runs do not)."""
    config = _run_config(path)
    return (isinstance(config, dict) and isinstance(config.get("allocator"), dict) and isinstance(config.get("modulator"), dict)
            and isinstance(config["allocator"].get("name"), str) and isinstance(config["modulator"].get("name"), str))


def load_run(path: Path) -> Run:
    path = Path(path)
    config = _run_config(path)
    if config is None:
        raise FileNotFoundError(f"{path} holds no config.yaml: not a run dir")
    run = Run(path=path, allocator=config["allocator"]["name"], modulator=config["modulator"]["name"],
              seed=int(config["seed"]), steps=int(config["trainer"]["steps"]), finished=(path / "eval.json").is_file(),
              config=config)
    for record in _read_jsonl(path / "metrics.jsonl"):
        run.last_step = max(run.last_step, int(record.get("step", 0)))
        if "rollout/total_rollouts" in record:
            run.rollouts = int(record["rollout/total_rollouts"])
            run.tokens = int(record["rollout/total_tokens"])
            run.seconds = float(record.get("time/elapsed_s", 0.0))
        if any(key.startswith("eval/") for key in record):
            run.evals.append(EvalPoint(step=int(record["step"]), rollouts=int(record.get("rollout/total_rollouts", 0)),
                                       tokens=int(record.get("rollout/total_tokens", 0)),
                                       seconds=float(record.get("time/elapsed_s", 0.0)),
                                       metrics={k[len("eval/"):]: v for k, v in record.items() if k.startswith("eval/")}))
    overrides_file = path / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        run.overrides = dict(o.split("=", 1) for o in yaml.safe_load(overrides_file.read_text()) or [] if "=" in o)
    if run.finished:
        result = json.loads((path / "eval.json").read_text())
        run.final, run.final_levels = result["overall"], result.get("levels", {})
    return run


def find_runs(root: Path) -> list[Run]:
    """Every train run under `root` (a multirun dir: `<root>/<job>/config.yaml`, any depth), in job order."""
    root = Path(root)
    dirs = {p.parent.parent if p.parent.name == ".hydra" else p.parent for p in root.rglob("config.yaml")}
    # W&B keeps a config.yaml of its own in every offline run (<run>/wandb/offline-run-*/files/)
    dirs = [d for d in dirs if "wandb" not in d.relative_to(root).parts and is_train_run(d)]

    def natural(path: Path):  # job 10 after job 9
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]

    return label_budgets(label_by_what_varies([load_run(d) for d in sorted(dirs, key=natural)]))


def label_budgets(runs: list[Run]) -> list[Run]:
    """When the runs' budgets differ (a budget sweep), name each run's budget by the parts that vary
    ("n=2", "n=2, P=64"): a method at one budget is then a group of its own, contrasted with GRPO at that budget."""
    if len(budgets(runs)) > 1:
        varying = [i for i in range(3) if len({budget_of(r)[i] for r in runs}) > 1]
        for run in runs:
            run.budget = ", ".join(f"{('n', 'P', 'steps')[i]}={budget_of(run)[i]}" for i in varying)
    return runs


BUDGET_KEYS = ("rollout.n", "trainer.prompts_per_step", "trainer.steps")  # named by label_budgets, not in the label


def label_by_what_varies(runs: list[Run]) -> list[Run]:
    """Name each run's method by the overrides that differ between runs, seed and budget aside: `experiment=dapo`
    across presets gives "dapo" (one varying key: its value), several keys give "k=v k=v". When only allocator and
    modulator vary (the ablation), or nothing does, the ablation's names stay (METHOD_LABELS): two presets with
    the same allocator and modulator (grpo, clip_higher) are then still told apart. Sets Run.label in place."""
    keys = list(dict.fromkeys(k for run in runs for k in run.overrides))
    varying = [k for k in keys if k != "seed" and k not in BUDGET_KEYS and len({run.overrides.get(k) for run in runs}) > 1]
    if not varying or set(varying) <= {"allocator", "modulator"}:
        return runs
    for run in runs:
        values = [(k, run.overrides.get(k, "-")) for k in varying]
        run.label = values[0][1] if len(values) == 1 else " ".join(f"{k}={v}" for k, v in values)
    return runs


# --------------------------------------------------------------------------------------- tables
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


def group_by_method(runs: Iterable[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.method, []).append(run)
    return dict(sorted(groups.items(), key=lambda item: (budget_of(item[1][0]) if item[1][0].budget else (),
                                                          method_order(item[0].split(" @ ")[0]))))


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


def unfinished(runs: Sequence[Run]) -> list[Run]:
    return [r for r in runs if not r.finished]


def summary_columns(rows: Sequence[MethodSummary]) -> list[str]:
    k = next((r.k for r in rows if r.k), None)
    return ["method", "seeds done", "greedy pass@1", "pass@1 (sampled)", f"pass@{k}" if k else "pass@k",
            "rollouts", "tokens", "train s"]


def summary_cells(row: MethodSummary) -> list[str]:
    return [row.method, f"{len(row.seeds)}/{row.expected}", row.greedy.format(), row.pass1.format(), row.pass_k.format(),
            f"{row.rollouts.mean:,.0f}" if row.rollouts.n else "–", row.tokens.format(0) if row.tokens.n else "–",
            row.seconds.format(0) if row.seconds.n else "–"]


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    aligns = ["---"] + ["--:"] * (len(columns) - 1)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def write_summary_csv(path: Path, rows: Sequence[MethodSummary]) -> None:
    """Machine-readable: mean and 95% half-width in separate columns (empty when there is no interval)."""
    def pair(interval: Interval) -> list:
        return [None if interval.n == 0 else interval.mean, interval.half_width]

    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        header = ["method", "seeds_done", "runs", "seeds"]
        for name in ("greedy_pass1", "pass1", "pass_k", "rollouts", "tokens", "train_seconds"):
            header += [f"{name}_mean", f"{name}_ci95"]
        writer.writerow(header + ["k"])
        for r in rows:
            cells = [r.method, len(r.seeds), r.expected, " ".join(map(str, r.seeds))]
            for interval in (r.greedy, r.pass1, r.pass_k, r.rollouts, r.tokens, r.seconds):
                cells += pair(interval)
            writer.writerow(cells + [r.k])


def write_runs_csv(path: Path, runs: Sequence[Run]) -> None:
    """One row per run, finished or not: the raw numbers behind every mean."""
    keys = sorted({key for r in runs for key in r.final})
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "method", "allocator", "modulator", "seed", "finished", "last_step", "steps",
                         "rollouts", "tokens", "train_seconds", *keys])
        for r in runs:
            writer.writerow([str(r.path), r.method, r.allocator, r.modulator, r.seed, r.finished, r.last_step, r.steps,
                             r.rollouts, r.tokens, round(r.seconds, 2), *[r.final.get(k) for k in keys]])


# ------------------------------------------------------------------------------- paired contrasts
@dataclass
class Contrast:
    """method − baseline in a final metric, paired by seed (same seed = same prompt order and eval draws)."""

    method: str
    baseline: str
    seeds: list[int]
    difference: Interval
    sd: float | None = None  # standard deviation of the paired differences over seeds (None with < 2)

    @property
    def mdd(self) -> float | None:
        """Minimum detectable difference (α 0.05 two-sided, power 0.8) at this contrast's seeds and spread."""
        return None if self.sd is None else minimum_detectable_difference(self.sd, len(self.seeds))


def paired_contrasts(runs: Sequence[Run], metric: str, baseline: str = BASELINE) -> list[Contrast]:
    """Each method against the baseline at the same budget (a budget sweep contrasts within each budget)."""
    grouped = group_by_method(runs)
    groups = {m: {r.seed: r for r in members if r.finished} for m, members in grouped.items()}
    out = []
    for method, by_seed in groups.items():
        budget = grouped[method][0].budget
        base = baseline + (f" @ {budget}" if budget else "")
        if method == base or base not in groups:
            continue
        seeds = sorted(set(by_seed) & set(groups[base]))
        diffs = [by_seed[s].final_metric(metric) - groups[base][s].final_metric(metric) for s in seeds]
        sd = statistics.stdev(diffs) if len(diffs) >= 2 else None
        out.append(Contrast(method=method, baseline=base, seeds=seeds, difference=mean_ci(diffs), sd=sd))
    return out


def minimum_detectable_difference(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest true paired difference a two-sided paired t-test over n seeds detects with probability `power`
    at level `alpha`, given the seeds' standard deviation of the differences: (t_{1-α/2, n-1} + t_{power, n-1})·sd/√n.
    None with fewer than two seeds. Known value: sd 0.02, n 3 -> (4.303 + 1.061)·0.02/√3 = 0.0619."""
    if n < 2:
        return None
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def seeds_to_detect(sd: float, difference: float, *, alpha: float = 0.05, power: float = 0.8, most: int = 1000) -> int | None:
    """The fewest seeds whose minimum detectable difference is <= `difference` at this sd (None beyond `most`)."""
    for n in range(2, most + 1):
        if minimum_detectable_difference(sd, n, alpha=alpha, power=power) <= difference:
            return n
    return None


# --------------------------------------------------------------------------------------- curves
@dataclass
class Curve:
    """A method's test metric against budget spent: mean over seeds and the seeds' min–max band."""

    method: str
    seeds: int
    x: list[float]  # mean over seeds of the x value at each eval step
    mean: list[float]
    low: list[float]
    high: list[float]


def learning_curves(runs: Sequence[Run], *, x: str, metric: str) -> list[Curve]:
    """Align each method's finished seeds by eval step (they share the eval cadence) and average.

    At a matched budget the rollouts at a step are equal across seeds; tokens and seconds are not, so the
    x value is the seeds' mean at that step. Steps that some seed lacks are dropped.
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {tuple(X_AXES)}, got {x!r}")
    curves = []
    for method, members in group_by_method(runs).items():
        done = [r for r in members if r.finished]
        if not done:
            continue
        by_step = [{p.step: p for p in r.evals if metric in p.metrics} for r in done]
        steps = sorted(set.intersection(*(set(s) for s in by_step)))
        if not steps:
            continue
        xs, means, lows, highs = [], [], [], []
        for step in steps:
            points = [s[step] for s in by_step]
            ys = [p.metrics[metric] for p in points]
            xs.append(sum(getattr(p, x) for p in points) / len(points))
            means.append(sum(ys) / len(ys))
            lows.append(min(ys))
            highs.append(max(ys))
        curves.append(Curve(method=method, seeds=len(done), x=xs, mean=means, low=lows, high=highs))
    return curves


CURVE_STYLES = (('-', 'o'), ('--', 's'), (':', '^'))  # (line style, marker) per 10 curves


def plot_curves(curves: Sequence[Curve], *, x: str, metric: str, path: Path, title: str) -> Path:
    """One line per method (mean over seeds) with a shaded min–max band over seeds; PNG via the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    many = len(curves) > 6  # the legend moves beside the axes, the bands fade
    fig, ax = plt.subplots(figsize=(8.4 if many else 6.4, 4.2), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, curve in enumerate(curves):  # past the 10 colours, a new line style and marker: no two methods look alike
        style, marker = CURVE_STYLES[i // len(colors) % len(CURVE_STYLES)]
        line, = ax.plot(curve.x, curve.mean, marker=marker, markersize=3, linestyle=style, color=colors[i % len(colors)],
                        label=f"{curve.method} ({_seeds(curve.seeds)})")
        ax.fill_between(curve.x, curve.low, curve.high, color=line.get_color(), alpha=0.08 if many else 0.18, linewidth=0)
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"{title}\nline: mean over seeds; band: min–max over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- rollouts to target
@dataclass
class TargetRow:
    method: str
    reached: int  # seeds whose test metric reached the target at some eval
    seeds: int  # finished seeds
    rollouts: Interval  # over the seeds that reached it
    tokens: Interval
    seconds: Interval


def first_reaching(run: Run, *, metric: str, target: float) -> EvalPoint | None:
    """The first eval record whose metric is >= target (None: never reached)."""
    return next((p for p in sorted(run.evals, key=lambda p: p.step) if p.metrics.get(metric, -1.0) >= target), None)


def initial_value(runs: Sequence[Run], metric: str) -> float | None:
    """Mean of the step-0 eval (the shared starting checkpoint) over finished runs."""
    values = [p.metrics[metric] for r in runs if r.finished for p in r.evals if p.step == 0 and metric in p.metrics]
    return sum(values) / len(values) if values else None


def default_target(runs: Sequence[Run], metric: str, fraction: float = 0.9) -> float | None:
    """90% of the way from the starting metric to the best method's final mean.

    A fraction of the *gain* rather than of the final value: the SFT start can already sit above 90% of
    the final value, and then every method would "reach" the target at step 0.
    """
    finals = [r.final_metric(metric) for r in runs if r.finished and r.final_metric(metric) is not None]
    if not finals:
        return None
    best = max(mean_ci([r.final_metric(metric) for r in members if r.finished]).mean
               for members in group_by_method(runs).values() if any(r.finished for r in members))
    start = initial_value(runs, metric)
    return best * fraction if start is None else start + fraction * (best - start)


def rollouts_to_target(runs: Sequence[Run], *, metric: str, target: float) -> list[TargetRow]:
    rows = []
    for method, members in group_by_method(runs).items():
        done = [r for r in members if r.finished]
        hits = [p for p in (first_reaching(r, metric=metric, target=target) for r in done) if p is not None]
        rows.append(TargetRow(method=method, reached=len(hits), seeds=len(done), rollouts=mean_ci([p.rollouts for p in hits]),
                              tokens=mean_ci([p.tokens for p in hits]), seconds=mean_ci([p.seconds for p in hits])))
    return rows


def target_cells(row: TargetRow) -> list[str]:
    return [row.method, f"{row.reached}/{row.seeds}", row.rollouts.format(0), row.tokens.format(0), row.seconds.format(0)]


TARGET_COLUMNS = ["method", "seeds reaching", "rollouts to target", "tokens to target", "train s to target"]


# ------------------------------------------------------------------------------------ statements
MDD_TARGET = 0.03  # the difference the ablation is sized to detect: 3 points of pass@1 (issue 10)


def findings(rows: Sequence[MethodSummary], contrasts: Sequence[Contrast], *, metric_label: str,
             interval_of=lambda row: row.pass1, start: float | None = None) -> list[str]:
    """Short factual sentences generated from the numbers: who has the highest mean, whether CIs overlap,
    whether DynaMO is the best, each method against GRPO paired by seed, and the gain over the start."""
    scored = [r for r in rows if interval_of(r).n > 0]
    if not scored:
        return ["No run finished, so there is nothing to compare."]
    best = max(scored, key=lambda r: interval_of(r).mean)
    lines = [f"Highest mean final {metric_label}: **{best.method}** ({interval_of(best).format()}, {_seeds(interval_of(best).n)})."]
    others = [r for r in scored if r is not best]
    overlapping = [r.method for r in others if interval_of(best).overlaps(interval_of(r))]
    separated = [r.method for r in others if interval_of(best).overlaps(interval_of(r)) is False]
    unknown = [r.method for r in others if interval_of(best).overlaps(interval_of(r)) is None]
    if overlapping:
        lines.append(f"Its 95% CI overlaps those of {', '.join(overlapping)}: the data do not separate these methods.")
    if separated:
        lines.append(f"Its 95% CI does not overlap those of {', '.join(separated)}.")
    if unknown:
        lines.append(f"No CI for {', '.join(unknown)} (fewer than two finished seeds).")
    dynamo = next((r for r in scored if r.method == "dynamo"), None)
    if dynamo is not None and dynamo is not best:
        lines.append(f"DynaMO does not have the highest mean: {interval_of(dynamo).mean:.3f} against "
                     f"{best.method}'s {interval_of(best).mean:.3f}.")
    for c in contrasts:
        if c.difference.n == 0:
            continue
        if c.sd == 0 and c.difference.mean == 0:  # e.g. an allocator with no room to move at this budget
            lines.append(f"{c.method} − {c.baseline}, paired by seed ({_seeds(len(c.seeds))}): identical on every seed.")
            continue
        verdict = {True: "the 95% CI excludes 0", False: "the 95% CI includes 0",
                   None: "too few paired seeds for a CI"}[c.difference.excludes_zero()]
        width = f" ± {c.difference.half_width:.3f}" if c.difference.half_width is not None else ""
        detect = ""
        if c.mdd is not None:
            need = seeds_to_detect(c.sd, MDD_TARGET) if c.sd > 0 else 2
            detect = (f"; smallest difference these seeds detect (α 0.05, power 0.8): {c.mdd:.3f}"
                      + (f", {need} seeds would detect {MDD_TARGET:.2f}" if need is not None else ""))
        lines.append(f"{c.method} − {c.baseline}, paired by seed ({_seeds(len(c.seeds))}): {c.difference.mean:+.3f}{width} "
                     f"({verdict}{detect}).")
    if start is not None:
        gains = {r.method: interval_of(r).mean - start for r in scored}
        lines.append(f"The shared starting checkpoint scores {start:.3f} (step-0 eval); change over it at the end: "
                     + ", ".join(f"{m} {g:+.3f}" for m, g in gains.items()) + ".")
    return lines


# --------------------------------------------------------------------------------- results page
PAGE_HEAD = ("# dynamo results\n\n"
             "<!-- generated file: do not edit by hand. -->\n"
             "This page is generated, never hand-edited: the sweep section by `dynamo sweep`, the benchmark section by\n"
             "`make bench`. Each section states the command, date and machine that produced it, and is rewritten\n"
             "on its own between its marker comments.\n")


def markers(section: str) -> tuple[str, str]:
    return f"<!-- BEGIN {section} (generated) -->", f"<!-- END {section} (generated) -->"


def update_results_page(path: Path, *, section: str, body: str) -> Path:
    """Replace the text between `section`'s markers (appending the section if absent); other sections stay."""
    path = Path(path)
    begin, end = markers(section)
    text = path.read_text() if path.is_file() else PAGE_HEAD
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), flags=re.DOTALL)
    text = pattern.sub(lambda _: block, text, count=1) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, text)  # a reader never sees half a page
    return path


def copy_figures(figures: Sequence[Path], *, dest_dir: Path, prefix: str) -> list[Path]:
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for figure in figures:
        target = dest_dir / f"{prefix}{Path(figure).name}"
        shutil.copyfile(figure, target)
        out.append(target)
    return out


def machine_description() -> str:
    """e.g. 'Linux x86_64, AMD EPYC 7B13 (2 cores), torch 2.13.0+cpu, no GPU'."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{platform.system()} {platform.machine()}", f"{cpu} ({os.cpu_count()} cores)"]
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        parts += [f"torch {torch.__version__}", gpu]
    except ImportError:
        pass
    return ", ".join(parts)


def code_commit(repo: Path | None = None) -> str:
    """The short commit of the code in `repo` (dynamo's own checkout by default), `-dirty` if src/, conf/,
    scripts/ or bench/ have uncommitted changes; "unknown" outside a git checkout."""
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src", "conf", "scripts", "bench"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def generated_line(command: str, commit: str | None = None) -> str:
    """Who made a section: the command, the commit of the code that produced the numbers, date and machine."""
    commit = commit or code_commit()
    return (f"_Generated by `{command}` from commit `{commit}` on {datetime.now():%Y-%m-%d %H:%M} on "
            f"{machine_description()}._")


# ----------------------------------------------------------------------------------- the budget
def budget_of(run: Run) -> tuple[int, int, int]:
    """(rollout.n, trainer.prompts_per_step, trainer.steps): equal for every run of a matched-budget sweep."""
    return (int(run.config["rollout"]["n"]), int(run.config["trainer"]["prompts_per_step"]), int(run.config["trainer"]["steps"]))


def budgets(runs: Sequence[Run]) -> dict[tuple[int, int, int], list[Run]]:
    out: dict[tuple[int, int, int], list[Run]] = {}
    for run in runs:
        out.setdefault(budget_of(run), []).append(run)
    return out


# ------------------------------------------------------------------------------------- per level
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
