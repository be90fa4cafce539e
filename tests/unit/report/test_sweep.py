"""`dynamo sweep` and the aggregation behind it: CI maths by hand, synthetic run dirs (one crashed), presets that
compose, and a tiny real sweep (sft -> `dynamo train --multirun seed=0,1` -> aggregate)."""
from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from helpers import write_run, write_synthetic_sweep

from dynamo_cli.cli import register_resolvers
from dynamo_cli.config.store import register_schemas
from dynamo_cli.recipes import sweep as sweep_recipe
from dynamo_cli.report.aggregate import aggregate
from dynamo_cli.report.contrasts import paired_contrasts
from dynamo_cli.report.curves import learning_curves
from dynamo_cli.report.labels import budgets, method_label
from dynamo_cli.report.prose import budget_text, findings
from dynamo_cli.report.provenance import code_commit, generated_line
from dynamo_cli.report.results_page import update_results_page
from dynamo_cli.report.runs import find_runs, unfinished
from dynamo_cli.report.stats import mean_ci, minimum_detectable_difference, seeds_to_detect, t_quantile
from dynamo_cli.report.tables import summarise, summary_cells, write_runs_csv, write_summary_csv
from dynamo_cli.report.targets import default_target, rollouts_to_target

register_schemas()
register_resolvers()


# ------------------------------------------------------------------------------------ CI maths
@pytest.fixture
def synthetic_sweep(tmp_path) -> Path:
    return write_synthetic_sweep(tmp_path / "runs")


def test_t_quantiles_match_tables():
    # two-sided 95% critical values from any t table
    for df, expected in [(1, 12.7062), (2, 4.3027), (3, 3.1824), (9, 2.2622), (30, 2.0423)]:
        assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(0.5, 5) == pytest.approx(0.0, abs=1e-12)
    assert t_quantile(0.025, 2) == pytest.approx(-4.3027, abs=1e-4)  # symmetric


def test_mean_ci_by_hand():
    # [1, 2, 3]: mean 2, s = 1, half-width t_{0.975, 2} * s / sqrt(3) = 4.3027 * 1 / 1.7321 = 2.4841
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci.mean == pytest.approx(2.0) and ci.half_width == pytest.approx(2.4841, abs=1e-4) and ci.n == 3
    assert (ci.low, ci.high) == pytest.approx((2 - 2.4841, 2 + 2.4841), abs=1e-4)
    assert ci.format() == "2.000 ± 2.484"
    one = mean_ci([0.7])  # a single seed: a mean but no interval
    assert one.mean == 0.7 and one.half_width is None and one.format() == "0.700 (CI n/a)"
    assert mean_ci([]).n == 0 and mean_ci([]).format() == "–"
    equal = mean_ci([0.5, 0.5])  # no spread: zero width
    assert equal.half_width == 0.0 and equal.excludes_zero() is True
    assert mean_ci([1, 2]).overlaps(mean_ci([2, 3])) is True
    assert mean_ci([1, 1.01]).overlaps(mean_ci([2, 2.01])) is False


def test_method_labels():
    assert method_label("uniform", "none") == "grpo"
    assert method_label("variance", "none") == "allocation only"
    assert method_label("uniform", "dynamo") == "modulation only"
    assert method_label("variance", "dynamo") == "dynamo"
    assert method_label("knapsack", "none") == "knapsack+none"


def test_find_runs_keeps_job_order_and_the_crashed_member(synthetic_sweep):
    runs = find_runs(synthetic_sweep)
    assert [r.path.name for r in runs] == ["0", "1", "2", "3", "4", "5"]
    crashed = unfinished(runs)
    assert [(r.method, r.seed, r.last_step, r.steps) for r in crashed] == [("dynamo", 2, 5, 10)]
    assert crashed[0].evals and crashed[0].final == {}


def test_summary_table_by_hand(synthetic_sweep):
    rows = {r.method: r for r in summarise(find_runs(synthetic_sweep))}
    assert list(rows) == ["grpo", "dynamo"]  # the ablation's order, not alphabetical
    grpo, dyn = rows["grpo"], rows["dynamo"]
    # grpo pass@1 [0.5, 0.6, 0.7]: mean 0.6, s = 0.1, half-width 4.3027 * 0.1 / sqrt(3) = 0.2484
    assert grpo.pass1.mean == pytest.approx(0.6) and grpo.pass1.half_width == pytest.approx(0.2484, abs=1e-4)
    assert grpo.greedy.mean == pytest.approx(0.65) and grpo.k == 2 and grpo.pass_k.mean == pytest.approx(0.7)
    assert grpo.seeds == [0, 1, 2] and grpo.expected == 3
    # 10 steps x 4 prompts x 2 rollouts = 80 rollouts; tokens 3 per rollout for grpo, 2 for dynamo
    assert grpo.rollouts.mean == 80 and grpo.tokens.mean == 240 and grpo.seconds.mean == 10
    # dynamo: seed 2 crashed, so 2 of 3 seeds; [0.7, 0.8]: s = 0.0707, half-width 12.706 * 0.0707 / sqrt(2) = 0.6353
    assert dyn.seeds == [0, 1] and dyn.expected == 3
    assert dyn.pass1.mean == pytest.approx(0.75) and dyn.pass1.half_width == pytest.approx(0.6353, abs=1e-4)
    assert dyn.tokens.mean == 160
    cells = summary_cells(dyn)
    assert cells[:2] == ["dynamo", "2/3"] and cells[3] == "0.750 ± 0.635"


def test_curves_rollouts_to_target_and_paired_contrast_by_hand(synthetic_sweep):
    runs = find_runs(synthetic_sweep)
    curves = {c.method: c for c in learning_curves(runs, x="rollouts", metric="pass@1")}
    grpo = curves["grpo"]
    assert grpo.x == [0, 40, 80] and grpo.seeds == 3
    assert grpo.mean == pytest.approx([0.4, 0.55, 0.6]) and grpo.low == [0.4, 0.45, 0.5] and grpo.high == [0.4, 0.65, 0.7]
    assert curves["dynamo"].seeds == 2 and curves["dynamo"].mean == pytest.approx([0.4, 0.65, 0.75])  # crashed seed left out
    assert learning_curves(runs, x="tokens", metric="pass@1")[0].x == [0, 120, 240]

    rows = {r.method: r for r in rollouts_to_target(runs, metric="pass@1", target=0.6)}
    # grpo: seed 0 never (0.5 at the end); seed 1 at step 10 (80 rollouts); seed 2 at step 5 (40 rollouts)
    # -> 2/3 reached, mean 60, s = 28.28, half-width 12.706 * 28.28 / sqrt(2) = 254.1
    assert (rows["grpo"].reached, rows["grpo"].seeds) == (2, 3)
    assert rows["grpo"].rollouts.mean == 60 and rows["grpo"].rollouts.half_width == pytest.approx(254.12, abs=0.01)
    assert rows["grpo"].tokens.mean == 180
    # dynamo: both finished seeds reach 0.6 at step 5 -> 40 rollouts each
    assert (rows["dynamo"].reached, rows["dynamo"].rollouts.mean, rows["dynamo"].rollouts.half_width) == (2, 40, 0.0)
    # default target: 90% of the way from the start (0.4) to the best final mean (dynamo 0.75) = 0.715
    assert default_target(runs, "pass@1") == pytest.approx(0.715)

    (contrast,) = paired_contrasts(runs, "pass@1")
    # seeds 0 and 1 only (dynamo seed 2 crashed): 0.7 - 0.5 = 0.8 - 0.6 = 0.2
    assert contrast.method == "dynamo" and contrast.seeds == [0, 1]
    assert contrast.difference.mean == pytest.approx(0.2) and contrast.difference.half_width == pytest.approx(0.0, abs=1e-9)

    summary = summarise(runs)
    text = " ".join(findings(summary, [contrast], metric_label="test pass@1", start=0.4))
    assert "Highest mean final test pass@1: **dynamo** (0.750 ± 0.635, 2 seeds)" in text
    assert "overlaps those of grpo" in text and "dynamo − grpo, paired by seed (2 seeds): +0.200 ± 0.000 (the 95% CI excludes 0; " in text
    assert "smallest difference these seeds detect (α 0.05, power 0.8): 0.000, 2 seeds would detect 0.03)" in text  # sd 0
    assert "scores 0.400 (step-0 eval); change over it at the end: grpo +0.200, dynamo +0.350." in text
    assert "DynaMO does not have the highest mean" not in text
    flipped = " ".join(findings(summary[:1] + [dataclasses.replace(summary[1], pass1=mean_ci([0.1, 0.2]))], [],
                                    metric_label="test pass@1"))
    assert "DynaMO does not have the highest mean: 0.150 against grpo's 0.600." in flipped


def test_csv_files_keep_every_run(synthetic_sweep, tmp_path):
    runs = find_runs(synthetic_sweep)
    write_runs_csv(tmp_path / "runs.csv", runs)
    write_summary_csv(tmp_path / "summary.csv", summarise(runs))
    rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert len(rows) == 6 and [r["finished"] for r in rows].count("False") == 1
    summary = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert summary[0]["method"] == "grpo" and float(summary[0]["pass1_mean"]) == pytest.approx(0.6)
    assert summary[1]["seeds_done"] == "2" and summary[1]["runs"] == "3"


def test_budget_mismatch_is_stated(tmp_path):
    write_run(tmp_path / "0", allocator="uniform", modulator="none", seed=0, curve=[0.1, 0.2, 0.3], n=2)
    write_run(tmp_path / "1", allocator="variance", modulator="dynamo", seed=0, curve=[0.1, 0.2, 0.3], n=4)
    runs = find_runs(tmp_path)
    assert len(budgets(runs)) == 2
    assert "not matched" in budget_text(runs)


def test_a_budget_sweep_groups_and_contrasts_within_each_budget(tmp_path):
    """Every method at every budget: one row per (method, budget), each contrasted with GRPO at its own budget."""
    finals = {(2, "uniform"): [0.30, 0.40], (2, "variance"): [0.30, 0.40],  # no room to allocate: equal
              (4, "uniform"): [0.50, 0.60], (4, "variance"): [0.55, 0.70]}
    job = 0
    for seed in range(2):
        for (n, allocator), per_seed in finals.items():
            write_run(tmp_path / str(job), allocator=allocator, modulator="none", seed=seed, n=n,
                      curve=[0.2, per_seed[seed]])
            job += 1
    runs = find_runs(tmp_path)
    assert [r.method for r in runs[:4]] == ["grpo @ n=2", "allocation only @ n=2", "grpo @ n=4", "allocation only @ n=4"]
    assert [r.method for r in summarise(runs)] == ["grpo @ n=2", "allocation only @ n=2", "grpo @ n=4",
                                                      "allocation only @ n=4"]  # by budget, then the ablation's order
    contrasts = {c.method: c for c in paired_contrasts(runs, "pass@1")}
    assert set(contrasts) == {"allocation only @ n=2", "allocation only @ n=4"}
    assert contrasts["allocation only @ n=2"].baseline == "grpo @ n=2"
    assert contrasts["allocation only @ n=2"].difference.mean == pytest.approx(0.0)
    assert contrasts["allocation only @ n=4"].baseline == "grpo @ n=4"
    assert contrasts["allocation only @ n=4"].difference.mean == pytest.approx((0.05 + 0.10) / 2)
    assert "varies by design" in budget_text(runs) and "not matched" not in budget_text(runs)
    lines = findings(summarise(runs), list(contrasts.values()), metric_label="test pass@1")
    assert "allocation only @ n=2 − grpo @ n=2, paired by seed (2 seeds): identical on every seed." in lines


def test_budget_preset_crosses_three_budgets_with_two_allocators():
    cfg, _ = sweep_recipe.compose(["sweep=budget"])
    jobs = sweep_recipe.job_list([*sweep_recipe.grid_overrides(cfg.sweep.grid), *cfg.sweep.overrides])
    assert len(jobs) == 18
    assert {(j[1], j[2]) for j in jobs} == {(f"rollout.n={n}", f"allocator={a}") for n in (2, 4, 8)
                                            for a in ("uniform", "variance")}
    assert "modulator=none" in cfg.sweep.overrides


def test_results_page_sections_regenerate_independently(tmp_path):
    page = tmp_path / "docs" / "results.md"
    update_results_page(page, section="sweep", body="sweep v1")
    update_results_page(page, section="bench", body="bench v1")
    update_results_page(page, section="sweep", body="sweep v2")
    text = page.read_text()
    assert "sweep v2" in text and "sweep v1" not in text and "bench v1" in text
    assert text.count("BEGIN sweep") == 1 and text.count("BEGIN bench") == 1
    assert text.index("BEGIN sweep") < text.index("BEGIN bench")  # a section keeps its place
    assert "generated" in text.splitlines()[2]


def test_ablation_is_the_papers_table_at_a_matched_budget():
    cfg, _ = sweep_recipe.compose(["sweep=ablation"])
    jobs = sweep_recipe.job_list([*sweep_recipe.grid_overrides(cfg.sweep.grid), *cfg.sweep.overrides])
    assert len(jobs) == 12
    methods = {(j[1], j[2]) for j in jobs}
    assert methods == {("allocator=uniform", "modulator=none"), ("allocator=variance", "modulator=none"),
                       ("allocator=uniform", "modulator=dynamo"), ("allocator=variance", "modulator=dynamo")}
    assert [j[0] for j in jobs[:4]] == ["seed=0"] * 4  # seed varies slowest: a cut-short sweep is still balanced
    keys = {o.split("=")[0] for o in cfg.sweep.overrides}
    assert {"rollout.n", "trainer.prompts_per_step", "trainer.steps"} <= keys  # the budget is the same for every run


def test_jobs_that_never_started_are_listed(synthetic_sweep, tmp_path):
    """A multirun that died early leaves jobs without a run dir: they are named, not forgotten."""
    cfg, _ = sweep_recipe.compose(["sweep=ablation", f"sweep.results={tmp_path / 'results.md'}"])
    jobs = sweep_recipe.job_list(["seed=0,1,2,3", "allocator=uniform,variance", "modulator=none"])  # 8 jobs, 6 ran
    missing = sweep_recipe.missing_jobs(synthetic_sweep, jobs)
    assert missing == [(6, ["seed=3", "allocator=uniform"]), (7, ["seed=3", "allocator=variance"])]
    ok = aggregate(synthetic_sweep, out_dir=tmp_path / "out", preset=cfg.sweep, command="test", missing=missing)
    assert ok is False
    assert "- job 7 never started: `seed=3 allocator=variance`" in (tmp_path / "out" / "summary.md").read_text()


def test_minimum_detectable_difference_hand_values():
    # n = 3: t_{0.975, 2} = 4.303, t_{0.8, 2} = 1.061 -> (4.303 + 1.061) * 0.02 / sqrt(3) = 0.0619
    assert minimum_detectable_difference(0.02, 3) == pytest.approx(0.0619, abs=1e-4)
    # n = 10: t_{0.975, 9} = 2.262, t_{0.8, 9} = 0.883 -> 3.145 * 0.02 / sqrt(10) = 0.0199
    assert minimum_detectable_difference(0.02, 10) == pytest.approx(0.0199, abs=1e-4)
    assert minimum_detectable_difference(0.02, 1) is None
    assert seeds_to_detect(0.02, 0.03) == 6  # n = 5 gives 0.0332, n = 6 gives 0.0285


def test_generated_line_names_the_commit():
    line = generated_line("dynamo sweep sweep=ablation", "abc1234")
    assert "`dynamo sweep sweep=ablation` from commit `abc1234`" in line
    assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?|unknown", code_commit())


# ------------------------------------------------------------------------------- the baselines sweep
def test_runs_are_named_by_what_varies_across_the_sweep(tmp_path):
    """experiment=grpo and experiment=clip_higher share allocator and modulator (uniform + none): named by the one
    override that varies, they stay two methods; an ablation (only allocator and modulator vary) keeps its names."""
    for job, (seed, experiment) in enumerate([(0, "grpo"), (0, "clip_higher"), (1, "grpo"), (1, "clip_higher")]):
        path = write_run(tmp_path / "presets" / str(job), allocator="uniform", modulator="none", seed=seed, curve=[0.4, 0.5])
        (path / ".hydra").mkdir()
        (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}", f"experiment={experiment}", "model.path=x"]))
    runs = find_runs(tmp_path / "presets")
    assert [r.method for r in runs] == ["grpo", "clip_higher", "grpo", "clip_higher"]
    assert [r.method for r in summarise(runs)] == ["grpo", "clip_higher"]
    for job, allocator in enumerate(["uniform", "variance"]):
        path = write_run(tmp_path / "ablation" / str(job), allocator=allocator, modulator="none", seed=0, curve=[0.4, 0.5])
        (path / ".hydra").mkdir()
        (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=0", f"allocator={allocator}", "modulator=none"]))
    assert [r.method for r in find_runs(tmp_path / "ablation")] == ["grpo", "allocation only"]


def test_a_preset_names_the_baseline_of_its_paired_contrasts(synthetic_sweep, tmp_path):
    """sweep.baseline: a sweep without GRPO (modulation_scope contrasts its two paths) still gets paired contrasts; a
    baseline that is not among the methods says so instead of leaving the contrasts out silently."""
    for baseline, expected in [("dynamo", "grpo − dynamo, paired by seed (2 seeds): -0.200 ± 0.000"),
                               ("ppo", "No paired contrasts: the baseline 'ppo' (sweep.baseline) is not among the methods (grpo, dynamo).")]:
        cfg, _ = sweep_recipe.compose(["sweep=ablation", "sweep.results=null", f"sweep.baseline={baseline}"])
        aggregate(synthetic_sweep, out_dir=tmp_path / baseline, preset=cfg.sweep, command="test")
        assert expected in (tmp_path / baseline / "summary.md").read_text()
