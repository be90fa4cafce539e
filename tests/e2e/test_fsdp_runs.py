"""The real runs of tests/unit/.../test_fsdp.py: fSDP2 full-parameter training (fsdp.py): which launch configs are admitted, the optimiser's checkpoint marker,
and real 2-process FSDP2 runs (gloo on CPU) against 1-process runs of the same global batch and seed, with an
exact resume from a sharded checkpoint."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch
from conftest import dynamo
from helpers import TRAIN_2P, launch, records, relative_distance
from safetensors.torch import load_file

from dynamo_cli.runtime import fsdp


def launch_fsdp2(processes: int, *args: str) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file conf/accelerate/fsdp2.yaml -m dynamo_cli ...`, as docs/scaling.md says."""
    return launch(processes, *args, config="conf/accelerate/fsdp2.yaml")


def test_fsdp2_on_two_processes_trains_like_one_and_resumes_exactly(sft_checkpoint, tmp_path):
    """3 RL steps (DynaMO with a KL term: the reference is sharded too) with weights, gradients and AdamW state sharded over 2 gloo processes, against 1
    plain process: the tolerance of the DDP test (identical allocations, completions and rewards; loss and gradient
    norm within 1e-4 relative; final weights within 1% of the distance they moved). Then a resume from the sharded
    step-2 checkpoint (full HF weights + optimiser shards) replays step 3: the same loss, gradient norm and weights."""
    two, one, resumed = tmp_path / "two", tmp_path / "one", tmp_path / "resumed"
    args = [*TRAIN_2P, "algorithm.kl_coef=0.05"]
    out = launch_fsdp2(2, "train", f"model.path={sft_checkpoint}", f"hydra.run.dir={two}", *args)
    dynamo("train", f"model.path={sft_checkpoint}", f"hydra.run.dir={one}", "device=cpu", *args)

    assert "2 processes (FSDP2)" in out.stdout and out.stdout.count("train step 3/3") == 1
    steps_two = [r for r in records(two / "metrics.jsonl") if "train/loss" in r]
    steps_one = [r for r in records(one / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in steps_two] == [1, 2, 3]
    for a, b in zip(steps_two, steps_one, strict=True):
        assert a["dist/replica_alloc_diff"] == 0.0 and "dist/replica_param_diff" not in a  # one copy of each weight
        assert a["rollout/reward_mean"] == b["rollout/reward_mean"] and a["alloc/max"] == b["alloc/max"]
        for key in ("train/loss", "train/grad_norm", "train/entropy", "train/kl_ref"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert any(r["train/grad_norm"] > 0 for r in steps_two) and steps_two[-1]["train/kl_ref"] > 0  # it learnt, and moved off the reference
    for a, b in zip(records(two / "rollouts.jsonl"), records(one / "rollouts.jsonl"), strict=True):
        assert (a["prompt_id"], a["n_alloc"], a["completion"], a["reward"]) == (b["prompt_id"], b["n_alloc"], b["completion"], b["reward"])
    assert relative_distance(two, one, sft_checkpoint) < 0.01
    assert json.loads((two / "eval.json").read_text())["overall"] == json.loads((one / "eval.json").read_text())["overall"]

    # the checkpoint: a full HF model (rank 0), the optimiser's shards (one file per rank), a marker in trainer_state.pt
    final = two / "checkpoints" / "final"
    full, plain = load_file(final / "model.safetensors"), load_file(one / "checkpoints/final/model.safetensors")
    assert {k: v.shape for k, v in full.items()} == {k: v.shape for k, v in plain.items()}
    assert json.loads((final / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert sorted(p.name for p in (final / fsdp.SHARDS_DIR).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert torch.load(final / "trainer_state.pt", weights_only=False)["optimizer"] == {"sharded": fsdp.SHARDS_DIR}
    assert not list((two / "checkpoints").glob(".shards-*")) and not list((two / "checkpoints").glob(".tmp-*"))

    # exact resume: step 3 again from step-2's weights and optimiser shards, in a new run dir
    launch_fsdp2(2, "train", f"model.path={sft_checkpoint}", f"hydra.run.dir={resumed}", *args,
                 f"trainer.resume={two}/checkpoints/step-2")
    again = [r for r in records(resumed / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in again] == [3]
    for key in ("train/loss", "train/grad_norm", "train/lr", "train/kl_ref", "rollout/reward_mean"):
        assert again[0][key] == pytest.approx(steps_two[-1][key], rel=1e-6, abs=1e-9), key
    # AdamW's moments and step count came back: the weights after step 3 match (a fresh optimiser's first,
    # bias-corrected step would move every weight by about lr)
    assert relative_distance(resumed, two, sft_checkpoint) < 1e-4
