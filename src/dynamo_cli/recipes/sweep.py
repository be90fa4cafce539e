"""`dynamo sweep`: a preset's train runs through Hydra multirun, then one aggregation into evidence.

    dynamo sweep sweep=ablation [sweep.<key>=<value> ...] [out_dir=<dir>] [-- <train overrides for every run>]
    dynamo sweep aggregate=<multirun dir> [sweep.metric=... sweep.target=... sweep.results=...]

A sweep: check that the sft run and every train run compose (before anything slow starts) -> `dynamo sft`
once, unless sweep.model_path names a checkpoint -> one subprocess
`dynamo train --multirun <grid> <preset overrides> model.path=<ckpt> hydra.sweep.dir=<out_dir>/runs`
-> aggregate <out_dir>/runs: per-method table (rich, markdown, CSV), curves (PNG), rollouts-to-target,
the runs that did not finish -> the sweep section of docs/results.md. `aggregate=` does the last step only,
for any multirun dir.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from dynamo_cli.cli import CONF_DIR, compose_variants, describe_error, fail, to_schema
from dynamo_cli.config import SweepConfig, SweepPresetConfig
from dynamo_cli.report import aggregate as agg

USAGE = """usage: dynamo sweep [sweep=<preset>] [sweep.<key>=<value> ...] [out_dir=<dir>] [-- <train overrides>]
       dynamo sweep aggregate=<multirun dir> [sweep.metric=...] [sweep.target=...] [sweep.results=...]
       dynamo sweep --cfg [overrides]       print the composed sweep config and exit

Runs a preset's grid of `dynamo train` runs (Hydra multirun) from one shared SFT checkpoint, then writes
summary.md, summary.csv, runs.csv and pass@1 curves (PNG) into the sweep dir and rewrites the sweep section
of docs/results.md. Everything after `--` is added to every train run (e.g. `-- device=cuda logger=wandb`).

presets: {presets}
keys of the preset (sweep.<key>=...): {keys}

examples:
  dynamo sweep sweep=ablation                                  # GRPO / allocation / modulation / DynaMO x 3 seeds
  dynamo sweep sweep=baselines                                 # every method (experiment=...) at one rollout budget
  dynamo sweep sweep=ablation sweep.model_path=<sft checkpoint>  # skip the sft run
  dynamo sweep sweep=ablation sweep.launcher=joblib sweep.jobs=2  # parallel runs (helps with spare cores/GPUs)
  dynamo sweep sweep=ablation sweep.launcher=slurm sweep.model_path=<sft ckpt> -- hydra.launcher.partition=<p>
  dynamo sweep aggregate=outputs/train/multirun/<date>/<time>   # tables and plots for any multirun, runs nothing"""


def main(argv: list[str]) -> None:
    if any(a in ("-h", "--help", "help") for a in argv[:1]):
        presets = ", ".join(sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")))
        keys = ", ".join(SweepPresetConfig.__dataclass_fields__)
        print(USAGE.format(presets=presets, keys=keys))
        return
    split = argv.index("--") if "--" in argv else len(argv)
    overrides, train_extra = argv[:split], argv[split + 1:]
    show_config = "--cfg" in overrides
    overrides = [o for o in overrides if o not in ("--cfg", "job")]
    cfg, composed = compose(overrides)
    if show_config:
        print(OmegaConf.to_yaml(composed))
        return
    command = "dynamo sweep " + " ".join(argv)
    if cfg.aggregate is not None:
        runs_dir = Path(cfg.aggregate)
        timing = runs_dir.parent / "timing.json"  # a `dynamo sweep` dir's runs/: keep the sweep's wall time
        ok = report(runs_dir, out_dir=runs_dir, preset=cfg.sweep, command=command,
                    timing=json.loads(timing.read_text()) if runs_dir.name == "runs" and timing.is_file() else None)
    else:
        ok = run_sweep(cfg, train_extra=train_extra, command=command)
    if not ok:
        raise SystemExit(1)  # results are written; some member did not finish


# ----------------------------------------------------------------------------------- composition
def compose(overrides: list[str]):
    """conf/sweep.yaml + the `sweep` preset group + overrides -> validated SweepConfig (one line, exit 2 on error)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            composed = hydra_compose(config_name="sweep", overrides=overrides)
            OmegaConf.resolve(composed)  # ${now:...} resolves inside Hydra's context, once
            return to_schema(composed), composed
    except Exception as error:  # noqa: BLE001 - every composition error becomes one line
        fail("sweep", describe_error(error))


def check_composes(command: str, overrides: list[str], *, multirun: bool) -> None:
    """Every variant of the sub-runs must compose now, not after the sft run has spent minutes."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    job_overrides = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            for variant in (compose_variants(job_overrides) if multirun else [job_overrides]):
                to_schema(hydra_compose(config_name=command, overrides=variant))
    except Exception as error:  # noqa: BLE001
        fail("sweep", f"the {command} runs of this sweep would fail: {describe_error(error)}")


def grid_overrides(grid: dict[str, list[str]]) -> list[str]:
    """{'seed': [0, 1], 'allocator': ['uniform', 'variance']} -> ['seed=0,1', 'allocator=uniform,variance']."""
    return [f"{key}={','.join(str(v) for v in values)}" for key, values in grid.items()]


def job_list(train_overrides: list[str]) -> list[list[str]]:
    """Each job's overrides, in the order (and so with the numbers) Hydra's basic sweeper gives them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([o for o in train_overrides if not o.startswith(("hydra.", "hydra/"))])
    return BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]


def launcher_overrides(preset: SweepPresetConfig) -> list[str]:
    if preset.launcher == "joblib":  # conf/hydra/launcher/local_parallel.yaml: n_jobs local processes
        return ["hydra/launcher=local_parallel", f"hydra.launcher.n_jobs={preset.jobs}"]
    if preset.launcher == "slurm":  # conf/hydra/launcher/slurm.yaml: one SLURM job per run
        return ["hydra/launcher=slurm"]
    return []


# ------------------------------------------------------------------------------------------ run
def _dynamo(*args: str) -> int:
    """A sub-run as its own process, output straight to this terminal (a train run shows its live view)."""
    return subprocess.run([sys.executable, "-m", "dynamo_cli", *args], check=False).returncode


def run_sweep(cfg: SweepConfig, *, train_extra: list[str], command: str) -> bool:
    preset, out_dir = cfg.sweep, Path(cfg.out_dir)
    grid = grid_overrides(preset.grid)
    train_common = [*preset.overrides, *train_extra]
    if preset.model_path is None:
        check_composes("sft", list(preset.sft_overrides), multirun=False)
    check_composes("train", [*grid, *train_common, *launcher_overrides(preset)]
                   + ([f"model.path={preset.model_path}"] if preset.model_path else []), multirun=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = job_list([*grid, *train_common])
    (out_dir / "sweep.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)) + f"# command: {command}\n"
                                        + f"# train overrides after --: {train_extra}\n")
    print(f"dynamo sweep: {preset.name}: {len(jobs)} train runs into {out_dir}/runs", flush=True)

    timing = {"commit": agg.code_commit(), "command": command}  # the code every run loads: do not edit it mid-sweep
    start = time.perf_counter()
    model_path = preset.model_path
    if model_path is None:
        sft_dir = out_dir / "sft"
        print(f"dynamo sweep: 1/2 dynamo sft {' '.join(preset.sft_overrides)} -> {sft_dir}", flush=True)
        code = _dynamo("sft", *preset.sft_overrides, f"hydra.run.dir={sft_dir}")
        if code != 0:
            fail("sweep", f"the sft run failed (exit code {code}); its output is above and in {sft_dir}")
        model_path = str(sft_dir / "checkpoints" / "final")
    timing["sft_s"] = round(time.perf_counter() - start, 1)

    train_args = ["--multirun", *grid, *train_common, f"model.path={model_path}", f"hydra.sweep.dir={out_dir / 'runs'}",
                  *launcher_overrides(preset)]
    print(f"dynamo sweep: 2/2 dynamo train {' '.join(train_args)}", flush=True)
    t0 = time.perf_counter()
    try:
        code = _dynamo("train", *train_args)
    except KeyboardInterrupt:  # Ctrl-C stops the runs; what finished is still aggregated and reported
        code = 130
    timing.update(train_s=round(time.perf_counter() - t0, 1), total_s=round(time.perf_counter() - start, 1),
                  train_exit_code=code, model_path=model_path)
    (out_dir / "timing.json").write_text(json.dumps(timing, indent=1))
    ok = report(out_dir / "runs", out_dir=out_dir, preset=preset, command=command, jobs=jobs, timing=timing)
    return ok and code == 0


# --------------------------------------------------------------------------------------- report
def missing_jobs(runs_dir: Path, jobs: list[list[str]]) -> list[tuple[int, list[str]]]:
    """Jobs of the grid with no run dir at all (the multirun stopped before starting them), each shown by the
    overrides that vary across jobs (seed=1 allocator=variance ...)."""
    varying = [k for k in range(len(jobs[0]) if jobs else 0) if len({job[k] for job in jobs}) > 1]
    return [(i, [job[k] for k in varying]) for i, job in enumerate(jobs) if not agg.is_train_run(runs_dir / str(i))]


def report(runs_dir: Path, *, out_dir: Path, preset: SweepPresetConfig, command: str,
           jobs: list[list[str]] | None = None, timing: dict | None = None) -> bool:
    """Aggregate every train run under runs_dir into out_dir and the results page. True if all finished."""
    from dynamo_cli.config import LoggerConfig
    from dynamo_cli.tracking.tracker import make_console, results_table

    console = make_console(LoggerConfig(console="auto"))
    runs = agg.find_runs(runs_dir)
    missing = missing_jobs(runs_dir, jobs) if jobs is not None else []
    if not runs and not missing:
        fail("sweep", f"no train runs under {runs_dir} (a run dir holds config.yaml with allocator and modulator)")
    metric = preset.metric
    rows = agg.summarise(runs)
    columns = agg.summary_columns(rows)
    cells = [agg.summary_cells(r) for r in rows]
    contrasts = agg.paired_contrasts(runs, metric)
    target = preset.target if preset.target is not None else agg.default_target(runs, metric)
    targets = agg.rollouts_to_target(runs, metric=metric, target=target) if target is not None else []
    interval_of = (lambda r: r.greedy) if metric == "greedy_pass1" else (lambda r: r.pass1)
    findings = agg.findings(rows, contrasts, metric_label=f"test {metric}", interval_of=interval_of,
                            start=agg.initial_value(runs, metric))

    out_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    for x in agg.X_AXES:
        curves = agg.learning_curves(runs, x=x, metric=metric)
        if curves:
            figures.append(agg.plot_curves(curves, x=x, metric=metric, path=out_dir / f"{_slug(metric)}_vs_{x}.png",
                                           title=f"{preset.name}: test {metric} vs {agg.X_AXES[x]}"))
    agg.write_summary_csv(out_dir / "summary.csv", rows)
    agg.write_runs_csv(out_dir / "runs.csv", runs)

    console.print(results_table(title=f"{preset.name}: final test metrics, mean ± 95% CI over seeds", columns=columns, rows=cells))
    if targets:
        console.print(results_table(title=f"rollouts to reach test {metric} >= {target:.3f}", columns=agg.TARGET_COLUMNS,
                                    rows=[agg.target_cells(t) for t in targets]))
    for line in findings:
        console.print(line.replace("**", ""))
    broken = agg.unfinished(runs)
    for run in broken:
        console.print(f"[red]did not finish[/]: {run.path} ({run.method}, seed {run.seed}, last step {run.last_step}/{run.steps})")
    for i, job in missing:
        console.print(f"[red]never started[/]: job {i} ({' '.join(job)})")

    body_figures = figures
    page = None
    if preset.results is not None:
        page = Path(preset.results)
        body_figures = agg.copy_figures(figures, dest_dir=page.parent / "results", prefix=f"{preset.name}_")
    body = section(runs=runs, rows=rows, columns=columns, cells=cells, findings=findings, targets=targets, target=target,
                   preset=preset, command=command, runs_dir=runs_dir, missing=missing, timing=timing,
                   figures=[os.path.relpath(f, (page or out_dir / "summary.md").parent) for f in body_figures])
    (out_dir / "summary.md").write_text(section(runs=runs, rows=rows, columns=columns, cells=cells, findings=findings,
                                                targets=targets, target=target, preset=preset, command=command,
                                                runs_dir=runs_dir, missing=missing, timing=timing,
                                                figures=[f.name for f in figures]))
    if page is not None:
        agg.update_results_page(page, section=f"sweep {preset.name}", body=body)  # one section per preset
    console.print(f"wrote {out_dir}/summary.md, summary.csv, runs.csv and {len(figures)} plots"
                  + (f"; updated the sweep section of {page}" if page else ""))
    return not broken and not missing


def _slug(metric: str) -> str:
    return metric.replace("@", "").replace("/", "_")


def _budget_text(runs: list[agg.Run]) -> str:
    budgets = agg.budgets(runs)
    if len(budgets) > 1:
        listed = "; ".join(f"n={n}, P={p}, {s} steps: {len(rs)} runs" for (n, p, s), rs in budgets.items())
        methods = [{agg.method_label(r.allocator, r.modulator) for r in rs} for rs in budgets.values()]
        if all(m == methods[0] for m in methods):  # every method at every budget: a budget sweep
            return (f"The budget varies by design: {listed}. Each method is a row per budget (`@ n=…`), and the "
                    "paired contrasts compare it with GRPO at the same budget.")
        return f"**The budget is not matched**: the runs differ in (rollout.n, prompts per step, steps): {listed}."
    (n, p, steps), = budgets
    cfg = runs[0].config
    text = (f"Matched budget: every run draws {p} prompts × n = {n} → {n * p:,} rollouts per step for {steps} steps "
            f"({n * p * steps:,} rollouts)")
    caps = {r.config["trainer"].get("rollout_budget") for r in runs}  # .get: run dirs from before trainer.rollout_budget
    if len(caps) == 1 and None not in caps:
        text += (f", and stops early once it has generated trainer.rollout_budget = {caps.pop():,} rollouts (all rounds, "
                 "dropped groups included: allocator=dapo|greso spend more than n × P per step)")
    bounds = [r.config["allocator"] for r in runs if "n_min" in r.config["allocator"]]
    if bounds:
        text += f"; variance allocation keeps every prompt in [n_min, n_max] = [{bounds[0]['n_min']}, {bounds[0]['n_max']}]"
    e, every = cfg["eval"], cfg["trainer"]["eval_every"]
    problems = e["max_problems"] or "all"
    return (text + f". Test: {problems} problems, greedy + {e['n_samples']} samples each (T = {e['temperature']}), "
            f"evaluated at step 0, every {every} steps and at the end. Model `{cfg['model']['name']}`, task "
            f"`{cfg['task']['name']}`, optimiser lr {cfg['optim']['lr']}.")


def section(*, runs, rows, columns, cells, findings, targets, target, preset, command, runs_dir, missing, timing,
            figures) -> str:
    """The sweep section of docs/results.md (and summary.md): every sentence is generated from the numbers."""
    finished = [r for r in runs if r.finished]
    commit = (timing or {}).get("commit")  # the sweep's own; an aggregate of bare runs names the current code
    lines = [f"## Sweep `{preset.name}`", "", agg.generated_line(command, commit), ""]
    lines.append(f"Runs: `{os.path.relpath(runs_dir)}` — {len(finished)} finished, {len(runs) - len(finished)} unfinished"
                 + (f", {len(missing)} never started" if missing else "") + ".")
    if runs:
        lines += ["", _budget_text(runs)]
    if timing:
        sft = (f"sft {timing['sft_s'] / 60:.1f} min" if timing["sft_s"] else "no sft run: the checkpoint came from sweep.model_path")
        made_by = f" The runs were made by `{timing['command']}`." if timing.get("command") else ""
        lines += ["", (f"Wall time of the whole sweep: {timing['total_s'] / 60:.1f} min ({sft}, "
                      f"train runs {timing['train_s'] / 60:.1f} min) — starting checkpoint "
                      f"`{os.path.relpath(timing['model_path'])}`.{made_by}")]
    lines += ["", "### Final test metrics", "",
              ("Mean ± 95% CI over seeds (Student t, n − 1 degrees of freedom; with 3 seeds the half-width is 2.48 "
              "standard deviations). pass@1 (sampled) is the mean success rate over the eval samples; `train s` "
              "is summed step time, eval excluded."), "", agg.markdown_table(columns, cells)]
    lines += ["", "### What the numbers show", ""] + [f"- {line}" for line in findings]
    level_columns, level_cells = agg.level_rows(runs, preset.metric)
    if level_cells:
        lines += ["", f"### Test {preset.metric} by difficulty level", "",
                  "Mean over finished seeds; the first row is the shared starting checkpoint.", "",
                  agg.markdown_table(level_columns, level_cells)]
    if figures:
        lines += ["", "### Learning curves", "",
                  f"Test {preset.metric} at each eval; line: mean over seeds, band: min–max over seeds.", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in figures]
    if targets:
        how = "set by sweep.target" if preset.target is not None else "90% of the way from the start to the best final mean"
        first = next((r for r in finished), None)
        resolution = ""
        if first is not None and not first.budget:
            n, p, _ = agg.budget_of(first)
            every = first.config["trainer"]["eval_every"] or first.steps
            resolution = (f" Resolution: one eval every {every} steps = {every * n * p:,} rollouts, so each value is the "
                          "budget at the first eval at or above the target.")
        lines += ["", f"### Rollouts to reach test {preset.metric} ≥ {target:.3f}", "",
                  (f"Target {how}. Means ± 95% CI over the seeds that reached it; seeds that never did are counted in "
                  f"`seeds reaching`, not averaged in.{resolution}"), "",
                  agg.markdown_table(agg.TARGET_COLUMNS, [agg.target_cells(t) for t in targets])]
    lines += ["", "### Runs that did not finish", ""]
    broken = agg.unfinished(runs)
    if not broken and not missing:
        lines.append("None: every run of the sweep wrote its eval.json.")
    for run in broken:
        lines.append(f"- `{os.path.relpath(run.path)}`: {run.method}, seed {run.seed}, stopped after step {run.last_step} "
                     f"of {run.steps} (no eval.json)")
    for i, job in missing:
        lines.append(f"- job {i} never started: `{' '.join(job)}`")
    return "\n".join(lines) + "\n"
