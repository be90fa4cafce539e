"""Turn a sweep's train runs into evidence: tables with 95% CIs, learning curves, rollouts-to-target, the page.

Reads run directories and writes files (summary.md, summary.csv, runs.csv, PNGs, the results page's sweep
section) and the console tables. Nothing here runs a model.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dynamo_cli.cli import fail
from dynamo_cli.report import prose
from dynamo_cli.report.contrasts import paired_contrasts
from dynamo_cli.report.curves import X_AXES, learning_curves
from dynamo_cli.report.plots import plot_curves
from dynamo_cli.report.results_page import copy_figures, update_results_page
from dynamo_cli.report.runs import find_runs, unfinished
from dynamo_cli.report.tables import summarise, summary_cells, summary_columns, write_runs_csv, write_summary_csv
from dynamo_cli.report.targets import TARGET_COLUMNS, default_target, initial_value, rollouts_to_target, target_cells
from dynamo_cli.runtime import atomic

if TYPE_CHECKING:
    from dynamo_cli.config.recipes import SweepPresetConfig


def aggregate(runs_dir: Path, *, out_dir: Path, preset: SweepPresetConfig, command: str,
              missing: Sequence[tuple[int, list[str]]] = (), timing: dict | None = None) -> bool:
    """Aggregate every train run under runs_dir into out_dir and the results page. True if every run finished and
    no job is `missing` (never started: its number and the overrides that vary across jobs)."""
    from dynamo_cli.config.logger import LoggerConfig
    from dynamo_cli.tracking.tracker import make_console, results_table

    console = make_console(LoggerConfig(console="auto"))
    runs = find_runs(runs_dir)
    if not runs and not missing:
        fail("sweep", f"no train runs under {runs_dir} (a run dir holds config.yaml with allocator and modulator)")
    metric = preset.metric
    rows = summarise(runs)
    columns = summary_columns(rows)
    cells = [summary_cells(r) for r in rows]
    contrasts = paired_contrasts(runs, metric, baseline=preset.baseline)
    target = preset.target if preset.target is not None else default_target(runs, metric)
    targets = rollouts_to_target(runs, metric=metric, target=target) if target is not None else []
    interval_of = (lambda r: r.greedy) if metric == "greedy_pass1" else (lambda r: r.pass1)
    findings = prose.findings(rows, contrasts, metric_label=f"test {metric}", interval_of=interval_of,
                              start=initial_value(runs, metric))
    methods = [r.method.split(" @ ")[0] for r in rows]
    if rows and preset.baseline not in methods:
        findings.append(f"No paired contrasts: the baseline {preset.baseline!r} (sweep.baseline) is not among the methods "
                        f"({', '.join(methods)}).")

    out_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    for x in X_AXES:
        curves = learning_curves(runs, x=x, metric=metric)
        if curves:
            figures.append(plot_curves(curves, x=x, metric=metric, path=out_dir / f"{_slug(metric)}_vs_{x}.png",
                                       title=f"{preset.name}: test {metric} vs {X_AXES[x]}"))
    write_summary_csv(out_dir / "summary.csv", rows)
    write_runs_csv(out_dir / "runs.csv", runs)

    console.print(results_table(title=f"{preset.name}: final test metrics, mean ± 95% CI over seeds", columns=columns, rows=cells))
    if targets:
        console.print(results_table(title=f"rollouts to reach test {metric} >= {target:.3f}", columns=TARGET_COLUMNS,
                                    rows=[target_cells(t) for t in targets]))
    for line in findings:
        console.print(line.replace("**", ""))
    broken = unfinished(runs)
    for run in broken:
        console.print(f"[red]did not finish[/]: {run.path} ({run.method}, seed {run.seed}, last step {run.last_step}/{run.steps})")
    for i, job in missing:
        console.print(f"[red]never started[/]: job {i} ({' '.join(job)})")

    body_figures = figures
    page = None
    if preset.results is not None:
        page = Path(preset.results)
        body_figures = copy_figures(figures, dest_dir=page.parent / "results", prefix=f"{preset.name}_")
    shared = dict(runs=runs, rows=rows, columns=columns, cells=cells, findings=findings, targets=targets, target=target,
                  preset=preset, command=command, runs_dir=runs_dir, missing=missing, timing=timing)
    body = prose.sweep_section(**shared, figures=[os.path.relpath(f, (page or out_dir / "summary.md").parent)
                                                  for f in body_figures])
    atomic.write_text(out_dir / "summary.md", prose.sweep_section(**shared, figures=[f.name for f in figures]))
    if page is not None:
        update_results_page(page, section=f"sweep {preset.name}", body=body)  # one section per preset
    console.print(f"wrote {out_dir}/summary.md, summary.csv, runs.csv and {len(figures)} plots"
                  + (f"; updated the sweep section of {page}" if page else ""))
    return not broken and not missing


def _slug(metric: str) -> str:
    return metric.replace("@", "").replace("/", "_")
