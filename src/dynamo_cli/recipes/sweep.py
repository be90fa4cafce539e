"""`dynamo sweep`: a preset's train runs through Hydra multirun, then one aggregation into evidence.

    dynamo sweep sweep=ablation [sweep.<key>=<value> ...] [out_dir=<dir>] [-- <train overrides for every run>]
    dynamo sweep aggregate=<multirun dir> [sweep.metric=... sweep.target=... sweep.results=...]

A sweep: check that the sft run and every train run compose (before anything slow starts) -> `dynamo sft`
once, unless sweep.model_path names a checkpoint -> one subprocess
`dynamo train --multirun <grid> <preset overrides> model.path=<ckpt> hydra.sweep.dir=<out_dir>/runs`
-> report/aggregate.py over <out_dir>/runs: per-method table (rich, markdown, CSV), curves (PNG), rollouts-to-target,
the runs that did not finish -> the sweep section of docs/results.md. `aggregate=` does the last step only,
for any multirun dir.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from dynamo_cli.cli import CONF_DIR, compose_variants, describe_error, fail, to_schema
from dynamo_cli.config.recipes import SweepConfig, SweepPresetConfig
from dynamo_cli.report.aggregate import aggregate
from dynamo_cli.report.provenance import code_commit
from dynamo_cli.report.runs import is_train_run
from dynamo_cli.runtime import atomic

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
        ok = aggregate(runs_dir, out_dir=runs_dir, preset=cfg.sweep, command=command,
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
    atomic.write_text(out_dir / "sweep.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)) + f"# command: {command}\n"
                      + f"# train overrides after --: {train_extra}\n")
    print(f"dynamo sweep: {preset.name}: {len(jobs)} train runs into {out_dir}/runs", flush=True)

    timing = {"commit": code_commit(), "command": command}  # the code every run loads: do not edit it mid-sweep
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
    atomic.write_text(out_dir / "timing.json", json.dumps(timing, indent=1))
    ok = aggregate(out_dir / "runs", out_dir=out_dir, preset=preset, command=command,
                   missing=missing_jobs(out_dir / "runs", jobs), timing=timing)
    return ok and code == 0


# ------------------------------------------------------------------------ jobs that never started
def missing_jobs(runs_dir: Path, jobs: list[list[str]]) -> list[tuple[int, list[str]]]:
    """Jobs of the grid with no run dir at all (the multirun stopped before starting them), each shown by the
    overrides that vary across jobs (seed=1 allocator=variance ...)."""
    varying = [k for k in range(len(jobs[0]) if jobs else 0) if len({job[k] for job in jobs}) > 1]
    return [(i, [job[k] for k in varying]) for i, job in enumerate(jobs) if not is_train_run(runs_dir / str(i))]

