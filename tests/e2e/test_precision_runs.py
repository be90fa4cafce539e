"""End-to-end: the GPU path's parts that run on a CPU. Importance sampling and masking with rollout=hf, bf16 mixed
precision (float32 masters) resuming exactly, FSDP2's MixedPrecisionPolicy with a sharded checkpoint and resume, an old
bf16 checkpoint resuming upcast, `make gpu-check` without a GPU, and the vLLM API check against the pinned wheels."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ENV, REPO, dynamo
from helpers import TRAIN_2P, TRAIN_SMALL, launch, records
from safetensors.torch import load_file

STEPS = [*TRAIN_SMALL, "trainer.steps=2", "trainer.eval_every=0", "eval.max_problems=8", "eval.n_samples=0", "optim.lr=1e-3"]


def train_steps(run_dir: Path) -> list[dict]:
    return [r for r in records(run_dir / "metrics.jsonl") if "train/loss" in r]


@pytest.mark.parametrize("correction", [
    ["algorithm.rollout_is=token", "algorithm.rollout_mask=sequence", "model.dtype=bfloat16"],
    ["algorithm.rollout_is=sequence", "algorithm.rollout_mask=token", "algorithm.rollout_mask_bounds=[0.9,1.1]"],
])
def test_rollout_is_and_rollout_mask_train_with_rollout_hf(sft_checkpoint, tmp_path, correction):
    """rollout=hf reports its sampling log-probs (a bf16 copy of the weights under mixed precision, the policy itself in
    float32), they reach the batch, and truncated IS and the mask train 2 steps on them, with the mismatch logged."""
    dynamo("train", f"model.path={sft_checkpoint}", f"hydra.run.dir={tmp_path}", *STEPS, *correction)
    steps = train_steps(tmp_path)
    assert [s["step"] for s in steps] == [1, 2]
    for s in steps:
        for key in ("train/rollout_is_weight", "train/rollout_mask_frac", "train/rollout_mismatch_kl", "rollout/mismatch_kl",
                    "rollout/mismatch_ratio_max", "rollout/mismatch_ratio_min", "rollout/mismatch_truncated_frac",
                    "rollout/mismatch_masked_frac"):
            assert math.isfinite(s[key]), key
        assert s["rollout/mismatch_kl"] >= 0 and s["rollout/mismatch_ratio_min"] <= 1 <= s["rollout/mismatch_ratio_max"]
        assert 0.5 < s["train/rollout_is_weight"] < 2.0
    assert any(s["train/grad_norm"] > 0 for s in steps)  # it learnt
    weights = load_file(tmp_path / "checkpoints/final/model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.float32}  # the float32 masters are what is saved


def test_a_bf16_run_resumes_exactly(sft_checkpoint, tmp_path):
    """model.dtype=bfloat16 over float32 masters: a resume from step-1's checkpoint replays step 2 bit for bit (the masters
    and AdamW's float32 moments are checkpointed; the hf engine's bf16 copy is rebuilt from the masters)."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    args = [f"model.path={sft_checkpoint}", *STEPS, "model.dtype=bfloat16", "trainer.save_every=1", "algorithm.rollout_is=token"]
    dynamo("train", f"hydra.run.dir={whole}", *args)
    dynamo("train", f"hydra.run.dir={resumed}", *args, f"trainer.resume={whole}/checkpoints/step-1")
    again, first = train_steps(resumed), train_steps(whole)
    assert [s["step"] for s in again] == [2]
    for key in ("train/loss", "train/grad_norm", "rollout/reward_mean", "rollout/mismatch_kl", "train/rollout_is_weight"):
        assert again[0][key] == first[-1][key], key
    a, b = (load_file(d / "checkpoints/final/model.safetensors") for d in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a) and {v.dtype for v in a.values()} == {torch.float32}


def test_a_pure_bf16_checkpoint_resumes_into_float32_masters_with_one_line(sft_checkpoint, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    args = [f"model.path={sft_checkpoint}", *STEPS, "model.dtype=bfloat16", "trainer.save_every=1"]
    result = dynamo("train", f"hydra.run.dir={old}", *args, "optim.master_weights=model")
    assert "optim.master_weights=model: the weights and AdamW's moments are held in bfloat16" in result.stderr
    assert {v.dtype for v in load_file(old / "checkpoints/step-1/model.safetensors").values()} == {torch.bfloat16}
    resumed = dynamo("train", f"hydra.run.dir={new}", *args, f"trainer.resume={old}/checkpoints/step-1")
    said = [line for line in resumed.stderr.splitlines() if line.startswith("dynamo: warning: this checkpoint holds")]
    assert said == ["dynamo: warning: this checkpoint holds bfloat16 weights (saved before float32 master weights): they resume "
                    "upcast to float32, and so do its AdamW moments; the rounding they carry stays"]
    assert {v.dtype for v in load_file(new / "checkpoints/final/model.safetensors").values()} == {torch.float32}


def test_fsdp2_mixed_precision_trains_checkpoints_and_resumes_exactly(sft_checkpoint, tmp_path):
    """2 FSDP2 gloo processes with model.dtype=bfloat16: the MixedPrecisionPolicy (bf16 compute, float32 reduce-scatter) over
    float32 shards; the checkpoint holds the float32 masters; a resume from step-1 replays step 2 exactly."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    args = [f"model.path={sft_checkpoint}", *[a for a in TRAIN_2P if not a.startswith(("trainer.steps", "trainer.save_every"))],
            "trainer.steps=2", "trainer.save_every=1", "model.dtype=bfloat16", "algorithm.rollout_mask=token"]
    out = launch(2, "train", f"hydra.run.dir={whole}", *args, config="conf/accelerate/fsdp2.yaml")
    assert "2 processes (FSDP2)" in out.stdout and "16-bit compute" in out.stdout
    launch(2, "train", f"hydra.run.dir={resumed}", *args, f"trainer.resume={whole}/checkpoints/step-1",
           config="conf/accelerate/fsdp2.yaml")
    again, first = train_steps(resumed), train_steps(whole)
    assert [s["step"] for s in again] == [2] and any(s["train/grad_norm"] > 0 for s in first)
    for key in ("train/loss", "train/grad_norm", "rollout/reward_mean", "rollout/mismatch_kl"):
        assert again[0][key] == pytest.approx(first[-1][key], rel=1e-6, abs=1e-9), key
    a, b = (load_file(d / "checkpoints/final/model.safetensors") for d in (whole, resumed))
    assert {v.dtype for v in a.values()} == {torch.float32}
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0


def test_gpu_check_without_a_gpu_says_so_runs_the_cpu_rows_and_exits_0(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: make gpu-check runs the GPU rows")
    result = subprocess.run(["make", "-s", "gpu-check"], cwd=REPO, env=ENV, text=True, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("dynamo gpu-check: no GPU (torch ")
    rows = {line.split()[0]: line for line in lines[2:] if line and not line[0].isdigit()}
    assert set(rows) == {"precision", "rollouts", "generation", "training", "memory", "fsdp2", "train", "vllm"}
    for name in ("generation", "training", "memory", "train"):
        assert rows[name].split(None, 1)[1].startswith("no GPU"), rows[name]
    assert "moves like float32" in rows["precision"] and "bf16 copy vs masters" in rows["rollouts"]
    assert "exact resume" in rows["fsdp2"] and "not checkable on the lent machine" in rows["vllm"]


WHEELS = Path(os.environ.get("DYNAMO_VLLM_WHEELS", "/tmp/vllm_wheel"))  # where `pip download vllm==X --no-deps -d` put them


@pytest.mark.skipif(not list(WHEELS.glob("vllm-*.whl")), reason=f"no vLLM wheels in {WHEELS} (pip download vllm==X --no-deps -d DIR; "
                    "set DYNAMO_VLLM_WHEELS)")
def test_the_vllm_api_check_passes_on_the_supported_wheels_and_fails_outside():
    from dynamo_cli.rollout.vllm import SUPPORTED

    def release(path: Path) -> tuple[int, int]:
        return tuple(int(x) for x in path.name.split("-")[1].split(".")[:2])

    inside = [w for w in WHEELS.glob("vllm-*.whl") if SUPPORTED[0] <= release(w) < SUPPORTED[1]]
    outside = [w for w in WHEELS.glob("vllm-*.whl") if not SUPPORTED[0] <= release(w) < SUPPORTED[1]]
    script = [sys.executable, str(REPO / "scripts/check_vllm_api.py")]
    if inside:
        passed = subprocess.run([*script, *map(str, inside)], cwd=REPO, text=True, capture_output=True, timeout=600)
        assert passed.returncode == 0, passed.stdout[-3000:]
        assert f"{len(inside)} of {len(inside)} wheels pass" in passed.stdout
    for wheel in outside:  # an older vLLM lacks APIs the code calls (0.10.2: reload_weights' arguments, logprobs modes)
        failed = subprocess.run([*script, "--allow-outside", str(wheel)], cwd=REPO, text=True, capture_output=True, timeout=600)
        assert failed.returncode == 1 and "FAIL" in failed.stdout, failed.stdout[-3000:]
