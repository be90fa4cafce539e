"""The real runs of tests/unit/.../test_distributed.py: data parallelism: the pure sharding helpers, counter-based sampling, and real 2-process runs (gloo on CPU)
compared with 1-process runs of the same global batch and seed."""
from __future__ import annotations

import json
import os

import pytest
from conftest import dynamo
from helpers import TRAIN_2P, launch, records, relative_distance
from safetensors.torch import load_file


def test_two_processes_train_like_one(sft_checkpoint, tmp_path):
    """3 RL steps (DynaMO: variance allocation + modulation) on 2 gloo processes and on 1, same global batch and seed.

    Stated tolerance: identical allocations, completions, rewards and advantages (sampling is counter-based);
    per-step loss and gradient norm within 1e-4 relative; final weights within 1% of the distance they moved
    (float sums in another order, amplified by Adam on near-zero gradients). Replicas agree exactly."""
    two, one = tmp_path / "two", tmp_path / "one"
    out = launch(2, "train", f"model.path={sft_checkpoint}", f"hydra.run.dir={two}", *TRAIN_2P)
    dynamo("train", f"model.path={sft_checkpoint}", f"hydra.run.dir={one}", "device=cpu", *TRAIN_2P)

    assert out.stdout.strip().splitlines()[-1] == str(two)  # one run dir, printed once (rank 0)
    assert out.stdout.count("train step 3/3") == 1  # rank 1 prints nothing
    steps_two = [r for r in records(two / "metrics.jsonl") if "train/loss" in r]
    steps_one = [r for r in records(one / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in steps_two] == [1, 2, 3]
    for a, b in zip(steps_two, steps_one, strict=True):
        assert a["dist/replica_param_diff"] == 0.0 and a["dist/replica_alloc_diff"] == 0.0  # after every step
        assert a["rollout/reward_mean"] == b["rollout/reward_mean"] and a["alloc/max"] == b["alloc/max"]
        for key in ("train/loss", "train/grad_norm", "train/entropy"):
            # abs 1e-6: the loss is a mean of O(1) terms of both signs that nearly cancel (here ~1e-3), so float32
            # sums in another order move it by ~1e-7 absolute, which can exceed 1e-4 of its small value
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    rollouts_two, rollouts_one = records(two / "rollouts.jsonl"), records(one / "rollouts.jsonl")
    assert len(rollouts_two) == len(rollouts_one) == 3 * 8 * 4
    for a, b in zip(rollouts_two, rollouts_one, strict=True):
        assert (a["prompt_id"], a["n_alloc"], a["completion"], a["reward"]) == (b["prompt_id"], b["n_alloc"], b["completion"], b["reward"])
        assert a["advantage"] == pytest.approx(b["advantage"], abs=1e-6)
    assert len({r["n_alloc"] for r in rollouts_two}) > 1  # the variance allocator really allocated unequally
    assert relative_distance(two, one, sft_checkpoint) < 0.01
    assert json.loads((two / "eval.json").read_text())["overall"] == json.loads((one / "eval.json").read_text())["overall"]
    assert not list(tmp_path.glob("two*/**/rank1*"))

    # resume under 2 processes: continue the finished run to step 4 from its final checkpoint
    launch(2, "train", f"model.path={sft_checkpoint}", f"hydra.run.dir={two}", *TRAIN_2P, "trainer.steps=4", "trainer.resume=auto")
    steps = [r["step"] for r in records(two / "metrics.jsonl") if "train/loss" in r]
    assert steps == [1, 2, 3, 4]
    assert max(r["step"] for r in records(two / "rollouts.jsonl")) == 4


def test_two_processes_train_ppo_with_a_critic_like_one(sft_checkpoint, tmp_path):
    """PPO + GAE with critic=separate under DDP: whitening over both processes' tokens and the critic's all-reduced
    gradient give the 1-process run's losses and gradient norms. One mini-batch per step, so both runs update on
    the same rows (each process shuffles its own rows into mini-batches)."""
    args = [*TRAIN_2P, "trainer.steps=2", "trainer.save_every=0", "algorithm.mini_batches=1", "algorithm.advantage=gae",
            "critic=separate", "critic.lr=1e-3"]
    two, one = tmp_path / "two", tmp_path / "one"
    launch(2, "train", f"model.path={sft_checkpoint}", f"hydra.run.dir={two}", *args)
    dynamo("train", f"model.path={sft_checkpoint}", f"hydra.run.dir={one}", "device=cpu", *args)
    steps_two = [r for r in records(two / "metrics.jsonl") if "train/loss" in r]
    steps_one = [r for r in records(one / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in steps_two] == [1, 2]
    for a, b in zip(steps_two, steps_one, strict=True):
        assert a["dist/replica_param_diff"] == 0.0
        for key in ("train/loss", "train/value_loss", "train/grad_norm", "train/critic_grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    for a, b in zip(records(two / "rollouts.jsonl"), records(one / "rollouts.jsonl"), strict=True):
        assert a["advantage"] == pytest.approx(b["advantage"], abs=1e-5)  # GAE whitened over the whole step


def test_two_processes_sft_and_eval_like_one(tmp_path):
    args = ["logger=none", "trainer.steps=20", "trainer.batch_size=32", "trainer.micro_batch_size=8", "trainer.eval_every=0",
            "trainer.log_every=10", "task.num_train=500", "task.levels=[L1]", "eval.max_problems=10", "eval.n_samples=2", "eval.ks=[1,2]"]
    two, one = tmp_path / "sft2", tmp_path / "sft1"
    launch(2, "sft", f"hydra.run.dir={two}", *args)
    dynamo("sft", f"hydra.run.dir={one}", "device=cpu", *args)
    loss_two = [r["train/loss"] for r in records(two / "metrics.jsonl") if "train/loss" in r]
    loss_one = [r["train/loss"] for r in records(one / "metrics.jsonl") if "train/loss" in r]
    assert loss_two == pytest.approx(loss_one, rel=1e-3)
    weights_two = load_file(two / "checkpoints/final/model.safetensors")
    weights_one = load_file(one / "checkpoints/final/model.safetensors")
    assert max(float((weights_two[k] - weights_one[k]).abs().max()) for k in weights_two) < 1e-3

    evals = tmp_path / "eval2", tmp_path / "eval1"
    eval_args = [f"model.path={one}/checkpoints/final", "logger=none", "eval.max_problems=30", "eval.n_samples=4", "eval.ks=[1,4]"]
    launch(2, "eval", f"hydra.run.dir={evals[0]}", *eval_args)
    dynamo("eval", f"hydra.run.dir={evals[1]}", "device=cpu", *eval_args)
    two_result, one_result = (json.loads((d / "eval.json").read_text()) for d in evals)
    assert two_result["problems"] == one_result["problems"]  # every problem, every sampled count: identical
    assert two_result["overall"] == one_result["overall"]
    assert os.listdir(evals[0]).count("eval.json") == 1
