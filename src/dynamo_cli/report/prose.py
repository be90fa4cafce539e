"""Generated markdown prose: the findings sentences, the budget paragraph and the whole sweep section."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dynamo_cli.report.contrasts import Contrast
from dynamo_cli.report.labels import budget_of, budgets, method_label, n_seeds
from dynamo_cli.report.provenance import generated_line
from dynamo_cli.report.runs import Run, unfinished
from dynamo_cli.report.stats import seeds_to_detect
from dynamo_cli.report.tables import MethodSummary, level_rows, markdown_table
from dynamo_cli.report.targets import TARGET_COLUMNS, target_cells

MDD_TARGET = 0.03  # the difference the ablation is sized to detect: 3 points of pass@1, a gain worth reporting at this scale


def findings(rows: Sequence[MethodSummary], contrasts: Sequence[Contrast], *, metric_label: str,
             interval_of=lambda row: row.pass1, start: float | None = None) -> list[str]:
    """Short factual sentences generated from the numbers: who has the highest mean, whether CIs overlap,
    whether DynaMO is the best, each method against the baseline (GRPO unless the preset names another) paired by
    seed, and the gain over the start."""
    scored = [r for r in rows if interval_of(r).n > 0]
    if not scored:
        return ["No run finished, so there is nothing to compare."]
    best = max(scored, key=lambda r: interval_of(r).mean)
    lines = [f"Highest mean final {metric_label}: **{best.method}** ({interval_of(best).format()}, {n_seeds(interval_of(best).n)})."]
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
            lines.append(f"{c.method} − {c.baseline}, paired by seed ({n_seeds(len(c.seeds))}): identical on every seed.")
            continue
        verdict = {True: "the 95% CI excludes 0", False: "the 95% CI includes 0",
                   None: "too few paired seeds for a CI"}[c.difference.excludes_zero()]
        width = f" ± {c.difference.half_width:.3f}" if c.difference.half_width is not None else ""
        detect = ""
        if c.mdd is not None:
            need = seeds_to_detect(c.sd, MDD_TARGET) if c.sd > 0 else 2
            detect = (f"; smallest difference these seeds detect (α 0.05, power 0.8): {c.mdd:.3f}"
                      + (f", {need} seeds would detect {MDD_TARGET:.2f}" if need is not None else ""))
        lines.append(f"{c.method} − {c.baseline}, paired by seed ({n_seeds(len(c.seeds))}): {c.difference.mean:+.3f}{width} "
                     f"({verdict}{detect}).")
    if start is not None:
        gains = {r.method: interval_of(r).mean - start for r in scored}
        lines.append(f"The shared starting checkpoint scores {start:.3f} (step-0 eval); change over it at the end: "
                     + ", ".join(f"{m} {g:+.3f}" for m, g in gains.items()) + ".")
    return lines


def budget_text(runs: list[Run]) -> str:
    """The budget paragraph: matched (n × P per step, the cap, the eval), varied by design, or not matched."""
    by_budget = budgets(runs)
    if len(by_budget) > 1:
        listed = "; ".join(f"n={n}, P={p}, {s} steps: {len(rs)} runs" for (n, p, s), rs in by_budget.items())
        methods = [{method_label(r.allocator, r.modulator) for r in rs} for rs in by_budget.values()]
        if all(m == methods[0] for m in methods):  # every method at every budget: a budget sweep
            return (f"The budget varies by design: {listed}. Each method is a row per budget (`@ n=…`), and the "
                    "paired contrasts compare it with GRPO at the same budget.")
        return f"**The budget is not matched**: the runs differ in (rollout.n, prompts per step, steps): {listed}."
    (n, p, steps), = by_budget
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


def sweep_section(*, runs, rows, columns, cells, findings, targets, target, preset, command, runs_dir, missing, timing,
                  figures) -> str:
    """The sweep section of docs/results.md (and summary.md): every sentence is generated from the numbers."""
    finished = [r for r in runs if r.finished]
    commit = (timing or {}).get("commit")  # the sweep's own; an aggregate of bare runs names the current code
    lines = [f"## Sweep `{preset.name}`", "", generated_line(command, commit), ""]
    lines.append(f"Runs: `{os.path.relpath(runs_dir)}` — {len(finished)} finished, {len(runs) - len(finished)} unfinished"
                 + (f", {len(missing)} never started" if missing else "") + ".")
    if runs:
        lines += ["", budget_text(runs)]
    if timing:
        sft = (f"sft {timing['sft_s'] / 60:.1f} min" if timing["sft_s"] else "no sft run: the checkpoint came from sweep.model_path")
        made_by = f" The runs were made by `{timing['command']}`." if timing.get("command") else ""
        lines += ["", (f"Wall time of the whole sweep: {timing['total_s'] / 60:.1f} min ({sft}, "
                      f"train runs {timing['train_s'] / 60:.1f} min) — starting checkpoint "
                      f"`{os.path.relpath(timing['model_path'])}`.{made_by}")]
    lines += ["", "### Final test metrics", "",
              ("Mean ± 95% CI over seeds (Student t, n − 1 degrees of freedom; with 3 seeds the half-width is 2.48 "
              "standard deviations). pass@1 (sampled) is the mean success rate over the eval samples; `train s` "
              "is summed step time, eval excluded."), "", markdown_table(columns, cells)]
    lines += ["", "### What the numbers show", ""] + [f"- {line}" for line in findings]
    level_columns, level_cells = level_rows(runs, preset.metric)
    if level_cells:
        lines += ["", f"### Test {preset.metric} by difficulty level", "",
                  "Mean over finished seeds; the first row is the shared starting checkpoint.", "",
                  markdown_table(level_columns, level_cells)]
    if figures:
        lines += ["", "### Learning curves", "",
                  f"Test {preset.metric} at each eval; line: mean over seeds, band: min–max over seeds.", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in figures]
    if targets:
        how = "set by sweep.target" if preset.target is not None else "90% of the way from the start to the best final mean"
        first = next((r for r in finished), None)
        resolution = ""
        if first is not None and not first.budget:
            n, p, _ = budget_of(first)
            every = first.config["trainer"]["eval_every"] or first.steps
            resolution = (f" Resolution: one eval every {every} steps = {every * n * p:,} rollouts, so each value is the "
                          "budget at the first eval at or above the target.")
        lines += ["", f"### Rollouts to reach test {preset.metric} ≥ {target:.3f}", "",
                  (f"Target {how}. Means ± 95% CI over the seeds that reached it; seeds that never did are counted in "
                  f"`seeds reaching`, not averaged in.{resolution}"), "",
                  markdown_table(TARGET_COLUMNS, [target_cells(t) for t in targets])]
    lines += ["", "### Runs that did not finish", ""]
    broken = unfinished(runs)
    if not broken and not missing:
        lines.append("None: every run of the sweep wrote its eval.json.")
    for run in broken:
        lines.append(f"- `{os.path.relpath(run.path)}`: {run.method}, seed {run.seed}, stopped after step {run.last_step} "
                     f"of {run.steps} (no eval.json)")
    for i, job in missing:
        lines.append(f"- job {i} never started: `{' '.join(job)}`")
    return "\n".join(lines) + "\n"
