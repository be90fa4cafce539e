"""The benchmarks: their maths by hand, and every script in --quick mode (seconds) through bench.run_all."""
from __future__ import annotations

import pytest
import torch
from helpers import write_run

from bench import grad_variance, overhead, sample_efficiency, speed


def test_trace_of_covariance_from_the_gram_matrix_by_hand():
    # draws g1 = (1, 0), g2 = (3, 0): mean (2, 0); sum ||g - mean||^2 = 1 + 1 = 2, over R - 1 = 1 -> 2; ||mean||^2 = 4
    g = torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    gram = g @ g.T  # [[1, 3], [3, 9]]: (trace 10 - sum 16 / 2) / 1 = 2
    assert grad_variance.trace_cov(gram) == pytest.approx(2.0)
    assert grad_variance.mean_sq_norm(gram) == pytest.approx(4.0)
    # the same as the covariance computed directly
    d = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert grad_variance.trace_cov(d @ d.T) == pytest.approx(float(torch.cov(d.T).trace()))
    low, high = grad_variance.bootstrap_ratio(d @ d.T, d @ d.T, stat=grad_variance.trace_cov, samples=200, seed=0)
    assert low <= 1.0 <= high


def test_sample_efficiency_by_hand(tmp_path, capsys):
    # grpo reaches pass@1 0.6 at 80 (seed 1) and 40 (seed 2) rollouts, never with seed 0 -> 2/3, mean 60;
    # dynamo reaches it at 40 with seeds 0 and 1 -> mean 40. Ratio 40 / 60 = 0.667. Paired (seed 1 only): 40 / 80.
    for job, (allocator, modulator, seed, curve) in enumerate([
            ("uniform", "none", 0, [0.4, 0.45, 0.5]), ("uniform", "none", 1, [0.4, 0.55, 0.6]),
            ("uniform", "none", 2, [0.4, 0.65, 0.7]), ("variance", "dynamo", 0, [0.4, 0.6, 0.7]),
            ("variance", "dynamo", 1, [0.4, 0.7, 0.8]), ("variance", "none", 0, [0.4, 0.9, 0.9])]):
        write_run(tmp_path / "runs" / str(job), allocator=allocator, modulator=modulator, seed=seed, curve=curve)
    result = sample_efficiency.main(["--sweep-dir", str(tmp_path), "--target", "0.6"])
    assert result.ratios["rollouts_to_target_dynamo_over_grpo"] == pytest.approx(40 / 60)
    assert result.ratios["tokens_to_target_dynamo_over_grpo"] == pytest.approx(40 / 60)  # 3 tokens per rollout in both
    text = "\n".join(result.lines)
    assert "(no new training)" in text and "| grpo | 2/3 | 60 ± 254 |" in text and "rollouts ratio 0.500 (CI n/a)" in text
    assert "allocation only" not in text  # only the two methods the bench compares
    assert "RATIO rollouts_to_target_dynamo_over_grpo = 0.6667" in capsys.readouterr().out


def test_sample_efficiency_without_runs_says_so(tmp_path):
    result = sample_efficiency.main(["--sweep-dir", str(tmp_path)])
    assert result.ratios["rollouts_to_target_dynamo_over_grpo"] is None
    assert "n/a: no finished grpo or dynamo run" in "\n".join(result.lines)


def test_allocation_time_spends_the_exact_budget():
    timing = overhead.allocation_time(2000, repeats=1)  # asserts sum(counts) == 8 * prompts inside
    assert timing["seconds"] > 0 and 0 < timing["pure_seconds"]


def test_speed_exports_the_baseline_and_times_a_fresh_draw(tmp_path):
    commit = speed.export("HEAD", tmp_path)  # what the bench imports the baseline from
    assert (tmp_path / "src" / "dynamo_cli" / "allocation" / "base.py").is_file() and (tmp_path / "conf" / "train.yaml").is_file()
    assert len(commit) >= 7
    first, again = speed.alloc_worker(3000, repeats=2, seed=0), speed.alloc_worker(3000, repeats=2, seed=0)
    assert first["seconds"] > 0 and first["counts_sha256"] == again["counts_sha256"]  # the same draws, the same allocations
    assert speed.alloc_worker(3000, repeats=2, seed=1)["counts_sha256"] != first["counts_sha256"]
    assert speed.ratio(1.0, 2.0) == 0.5 and speed.ratio(None, 2.0) is None and speed.ratio(1.0, 0.0) is None


def test_real_model_speed_without_the_converted_model_says_so_and_exits_2(monkeypatch, capsys):
    from bench import real_model_speed

    monkeypatch.setattr(real_model_speed, "model_dir", lambda: None)
    with pytest.raises(SystemExit) as stop:
        real_model_speed.main([])
    assert stop.value.code == 2 and "run `make real-model` first" in capsys.readouterr().err
