"""scripts/real_demo_report.py on hand-made run dirs: the format rate, the gains and their CI, the README block."""
from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from conftest import REPO
from omegaconf import OmegaConf


def _report():
    sys.path.insert(0, str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location("real_demo_report", REPO / "scripts" / "real_demo_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eval(greedy: list[float], rules: list[str], sampled: float) -> dict:
    return {"n_samples": 2, "overall": {"problems": len(greedy), "greedy": sum(greedy) / len(greedy), "pass@1": sampled},
            "problems": [{"id": f"chain_sum/{i}", "greedy": g, "greedy_rule": r} for i, (g, r) in enumerate(zip(greedy, rules, strict=True))]}


def _run(out, method: str, seed: int, before: dict, after: dict, seconds: int = 600) -> None:
    run = out / method / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "eval_before.json").write_text(json.dumps(before))
    (run / "eval.json").write_text(json.dumps(after))
    (run / "seconds.txt").write_text(f"commit abc1234\nthreads 2\nseconds {seconds}\n")
    OmegaConf.save(OmegaConf.create({
        "model": {"lora": {"r": 16}}, "optim": {"lr": 5e-4}, "eval": {"n_samples": 2},
        "trainer": {"steps": 16, "prompts_per_step": 8}, "rollout": {"n": 4},
        "task": {"num_train": 100, "config": {"chain_sum": {"min_terms": 2, "min_digits": 1}}}}), run / "config.yaml")


def test_format_rate_counts_boxed_and_cued_answers_only():
    report = _report()
    assert report.format_rate(_eval([1, 0, 1, 0], ["boxed", "answer_cue", "last_number", "none"], 0.1)) == 0.5


def test_summary_gains_ci_and_readme_block(tmp_path):
    report = _report()
    rules = ["last_number"] * 4
    before = _eval([1, 0, 0, 0], rules, 0.10)
    for seed, (greedy, sampled) in enumerate([([1, 1, 0, 0], 0.20), ([1, 1, 1, 0], 0.30), ([1, 1, 0, 0], 0.25)]):
        _run(tmp_path, "dynamo", seed, before, _eval(greedy, ["boxed", "boxed", "last_number", "none"], sampled), seconds=540 + seed * 60)
    _run(tmp_path, "grpo", 0, before, _eval([1, 0, 0, 0], rules, 0.15))
    (tmp_path / "dynamo" / "seed3").mkdir()  # unfinished: no eval.json, not counted
    summary = report.summarise(tmp_path)
    assert summary["seeds"] == [0, 1, 2] and summary["commit"] == "abc1234" and summary["torch_threads"] == 2
    assert summary["greedy"]["before"] == 0.25 and summary["greedy"]["gain"] == pytest.approx((0.25 + 0.5 + 0.25) / 3)
    # gains 0.10, 0.20, 0.15: mean 0.15, sd 0.05, t(0.975, 2) = 4.303 -> half width 0.1242
    assert summary["sampled"]["gain"] == pytest.approx(0.15)
    assert summary["sampled"]["ci95"] == pytest.approx([0.15 - 0.1242, 0.15 + 0.1242], abs=1e-4)
    assert summary["format_rate"] == {"before": 0.0, "after": 0.5}
    assert summary["minutes_per_seed"] == 11.0
    assert summary["methods"]["grpo"]["seeds"] == [0] and summary["methods"]["grpo"]["greedy"]["ci95"] is None
    block = report.readme_block(summary)
    assert block.startswith(report.START) and block.endswith(report.END)
    assert "0.250 → 0.583 (+33.3 points, 95% CI over 3 seeds" in block
    text = f"before\n{report.START}\nold\n{report.END}\nafter"
    assert report.replace_block(text, block) == f"before\n{block}\nafter"


def test_no_finished_headline_run_is_one_line(tmp_path):
    report = _report()
    (tmp_path / "grpo").mkdir()
    with pytest.raises(SystemExit, match="no finished dynamo run"):
        report.summarise(tmp_path)
