"""Data parallelism: the pure sharding helpers, counter-based sampling, and real 2-process runs (gloo on CPU)
compared with 1-process runs of the same global batch and seed."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from conftest import ENV, REPO, dynamo
from safetensors.torch import load_file

from dynamo_cli.rollout.hf import counter_uniforms, generate, sample_next, stream_seed
from dynamo_cli.runtime.distributed import shard_bounds, shard_counts


# ------------------------------------------------------------------------------------------ pure parts
@pytest.mark.parametrize("size,world", [(10, 1), (10, 2), (10, 3), (7, 4), (3, 5), (512, 8)])
def test_shards_cover_every_row_once_and_differ_by_at_most_one(size, world):
    bounds = [shard_bounds(size, rank=r, world_size=world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    lengths = [hi - lo for lo, hi in bounds]
    assert max(lengths) - min(lengths) <= 1


def test_shard_counts_splits_prompt_groups_at_the_row_boundary():
    counts = torch.tensor([3, 0, 2, 4])  # rows: p0 p0 p0 | p2 p2 | p3 p3 p3 p3
    assert shard_counts(counts, lo=0, hi=4).tolist() == [3, 0, 1, 0]
    assert shard_counts(counts, lo=4, hi=9).tolist() == [0, 0, 1, 4]
    assert shard_counts(counts, lo=2, hi=6).tolist() == [1, 0, 2, 1]
    for world in (1, 2, 3, 4):
        total = sum(shard_counts(counts, lo=lo, hi=hi) for lo, hi in (shard_bounds(9, rank=r, world_size=world) for r in range(world)))
        assert total.tolist() == counts.tolist()


def test_counter_uniforms_depend_only_on_seed_stream_and_position():
    streams = torch.arange(1000)
    u = counter_uniforms(7, streams, 3)
    assert torch.equal(u[400:600], counter_uniforms(7, streams[400:600], 3))  # a share draws what the whole drew
    assert torch.equal(u[torch.tensor([5, 1, 9])], counter_uniforms(7, torch.tensor([5, 1, 9]), 3))  # any order
    assert not torch.equal(u, counter_uniforms(8, streams, 3)) and not torch.equal(u, counter_uniforms(7, streams, 4))
    assert 0 < float(u.min()) and float(u.max()) < 1
    many = counter_uniforms(stream_seed(1, 2), torch.arange(200_000), 0)
    assert abs(float(many.mean()) - 0.5) < 0.005 and abs(float(many.var()) - 1 / 12) < 0.002
    assert stream_seed(1, 2) != stream_seed(2, 1) != stream_seed(1, 3)


def test_inverse_cdf_sampling_matches_the_distribution_and_respects_top_p():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])
    n = 200_000
    logits = probs.log().expand(n, -1)
    uniforms = counter_uniforms(stream_seed(3), torch.arange(n), 0)
    tokens = sample_next(logits, temperature=1.0, top_p=1.0, uniforms=uniforms)
    freq = torch.bincount(tokens, minlength=5).double() / n
    assert torch.allclose(freq, probs.double(), atol=0.005), freq
    nucleus = sample_next(logits, temperature=1.0, top_p=0.7, uniforms=uniforms)  # keeps {0, 1}: 0.5 + 0.25 >= 0.7
    assert set(nucleus.unique().tolist()) == {0, 1}
    freq = torch.bincount(nucleus, minlength=5).double() / n
    assert abs(float(freq[0]) - 2 / 3) < 0.005
    assert torch.equal(sample_next(logits[:3], temperature=1.0, top_p=1.0, uniforms=None), torch.zeros(3, dtype=torch.long))


def test_a_share_of_the_batch_generates_what_the_whole_batch_generated():
    from dynamo_cli.config.model import TinyModelConfig
    from dynamo_cli.models.load import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=64, num_layers=2, intermediate_size=128), tokenizer)
    prompts = ["1+2=", "34+5=", "7*8=", "12+34="]
    counts = torch.tensor([3, 1, 4, 2])
    kwargs = dict(max_new_tokens=6, temperature=1.0, top_p=1.0, seed=stream_seed(0, 1))
    whole = generate(model, tokenizer, prompts, counts=counts, max_batch_size=512, **kwargs)
    pieces = []
    for lo, hi in [shard_bounds(10, rank=r, world_size=3) for r in range(3)]:
        share = generate(model, tokenizer, prompts, counts=shard_counts(counts, lo=lo, hi=hi), streams=torch.arange(lo, hi),
                         max_batch_size=2, **kwargs)  # other chunking too
        pieces.extend(zip(share.prompt_index.tolist(), share.texts, strict=True))
    assert pieces == list(zip(whole.prompt_index.tolist(), whole.texts, strict=True))
    assert len(set(whole.texts)) > 3  # really sampled, not greedy


def test_uneven_layouts_are_refused_with_one_clear_line():
    from dynamo_cli.errors import DynamoError
    from dynamo_cli.stages.update import check_batch_layout

    check_batch_layout(rollouts_per_step=512, world_size=8, mini_batches=4)
    with pytest.raises(DynamoError, match="512 rollouts per step do not split evenly over 3 processes"):
        check_batch_layout(rollouts_per_step=512, world_size=3, mini_batches=1)
    with pytest.raises(DynamoError, match="algorithm.mini_batches=8 needs at least 8 rollouts per process"):
        check_batch_layout(rollouts_per_step=16, world_size=4, mini_batches=8)


# ------------------------------------------------------------------------------- 2 processes vs 1
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stacks_then_kill(process: subprocess.Popen) -> tuple[str, str]:
    """SIGABRT the launcher's workers (torch's launcher starts each in a session of its own, so a process-group
    signal misses them, and they would outlive the test holding its pipes), then SIGKILL whatever is left."""
    workers = psutil.Process(process.pid).children(recursive=True)
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.send_signal(signal.SIGABRT)
    try:
        return process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        for leftover in [*workers, psutil.Process(process.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        return process.communicate()


def launch(processes: int, *args: str, config: str = "conf/accelerate/cpu_ddp.yaml") -> subprocess.CompletedProcess:
    """`accelerate launch --config_file <config> -m dynamo_cli ...`, as docs/scaling.md says."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
           "--num_processes", str(processes), "--main_process_port", str(_free_port()), "-m", "dynamo_cli", *args, "device=cpu"]
    process = subprocess.Popen(cmd, cwd=REPO, env={**ENV, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:  # a hang: each worker prints every thread's stack (faulthandler, on SIGABRT)
        stdout, stderr = _stacks_then_kill(process)
        raise AssertionError(f"{' '.join(cmd)} hung for 600 s; the processes' stacks:\n{stdout[-3000:]}\n{stderr[-12000:]}") from None
    result = subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _relative_distance(a: Path, b: Path, start: Path) -> float:
    """||θ_a - θ_b|| / ||θ_a - θ_start||: how far apart two runs ended, relative to how far they moved."""
    pa, pb, p0 = (load_file(p / "checkpoints/final/model.safetensors") if p != start else load_file(p / "model.safetensors")
                  for p in (a, b, start))
    apart = sum(float((pa[k].double() - pb[k].double()).square().sum()) for k in pa) ** 0.5
    moved = sum(float((pa[k].double() - p0[k].double()).square().sum()) for k in pa) ** 0.5
    assert moved > 0
    return apart / moved


TRAIN_2P = ["logger=none", "trainer.steps=3", "trainer.prompts_per_step=8", "rollout.n=4", "allocator.n_min=2",
            "allocator.n_max=8", "eval.max_problems=12", "eval.n_samples=2", "eval.ks=[1,2]", "trainer.eval_every=0",
            "algorithm.micro_batch_size=4", "task.num_train=2000", "task.levels=[L1]", "trainer.dump_rollouts=true",
            "optim.lr=1e-3", "trainer.save_every=2",
            # one update per step: with several, each process splits its own rows into mini-batches, which is a
            # different (equally random) split of the global batch than one process's, so losses differ after update 1
            "algorithm.mini_batches=1",
            "trainer.prompt_pool=8"]  # the same 8 prompts every step: from step 2 the allocator acts on their history


@pytest.mark.slow
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
    steps_two = [r for r in _records(two / "metrics.jsonl") if "train/loss" in r]
    steps_one = [r for r in _records(one / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in steps_two] == [1, 2, 3]
    for a, b in zip(steps_two, steps_one, strict=True):
        assert a["dist/replica_param_diff"] == 0.0 and a["dist/replica_alloc_diff"] == 0.0  # after every step
        assert a["rollout/reward_mean"] == b["rollout/reward_mean"] and a["alloc/max"] == b["alloc/max"]
        for key in ("train/loss", "train/grad_norm", "train/entropy"):
            # abs 1e-6: the loss is a mean of O(1) terms of both signs that nearly cancel (here ~1e-3), so float32
            # sums in another order move it by ~1e-7 absolute, which can exceed 1e-4 of its small value
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    rollouts_two, rollouts_one = _records(two / "rollouts.jsonl"), _records(one / "rollouts.jsonl")
    assert len(rollouts_two) == len(rollouts_one) == 3 * 8 * 4
    for a, b in zip(rollouts_two, rollouts_one, strict=True):
        assert (a["prompt_id"], a["n_alloc"], a["completion"], a["reward"]) == (b["prompt_id"], b["n_alloc"], b["completion"], b["reward"])
        assert a["advantage"] == pytest.approx(b["advantage"], abs=1e-6)
    assert len({r["n_alloc"] for r in rollouts_two}) > 1  # the variance allocator really allocated unequally
    assert _relative_distance(two, one, sft_checkpoint) < 0.01
    assert json.loads((two / "eval.json").read_text())["overall"] == json.loads((one / "eval.json").read_text())["overall"]
    assert not list(tmp_path.glob("two*/**/rank1*"))

    # resume under 2 processes: continue the finished run to step 4 from its final checkpoint
    launch(2, "train", f"model.path={sft_checkpoint}", f"hydra.run.dir={two}", *TRAIN_2P, "trainer.steps=4", "trainer.resume=auto")
    steps = [r["step"] for r in _records(two / "metrics.jsonl") if "train/loss" in r]
    assert steps == [1, 2, 3, 4]
    assert max(r["step"] for r in _records(two / "rollouts.jsonl")) == 4


@pytest.mark.slow
def test_two_processes_train_ppo_with_a_critic_like_one(sft_checkpoint, tmp_path):
    """PPO + GAE with critic=separate under DDP: whitening over both processes' tokens and the critic's all-reduced
    gradient give the 1-process run's losses and gradient norms. One mini-batch per step, so both runs update on
    the same rows (each process shuffles its own rows into mini-batches)."""
    args = [*TRAIN_2P, "trainer.steps=2", "trainer.save_every=0", "algorithm.mini_batches=1", "algorithm.advantage=gae",
            "critic=separate", "critic.lr=1e-3"]
    two, one = tmp_path / "two", tmp_path / "one"
    launch(2, "train", f"model.path={sft_checkpoint}", f"hydra.run.dir={two}", *args)
    dynamo("train", f"model.path={sft_checkpoint}", f"hydra.run.dir={one}", "device=cpu", *args)
    steps_two = [r for r in _records(two / "metrics.jsonl") if "train/loss" in r]
    steps_one = [r for r in _records(one / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in steps_two] == [1, 2]
    for a, b in zip(steps_two, steps_one, strict=True):
        assert a["dist/replica_param_diff"] == 0.0
        for key in ("train/loss", "train/value_loss", "train/grad_norm", "train/critic_grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    for a, b in zip(_records(two / "rollouts.jsonl"), _records(one / "rollouts.jsonl"), strict=True):
        assert a["advantage"] == pytest.approx(b["advantage"], abs=1e-5)  # GAE whitened over the whole step


@pytest.mark.slow
def test_two_processes_sft_and_eval_like_one(tmp_path):
    args = ["logger=none", "trainer.steps=20", "trainer.batch_size=32", "trainer.micro_batch_size=8", "trainer.eval_every=0",
            "trainer.log_every=10", "task.num_train=500", "task.levels=[L1]", "eval.max_problems=10", "eval.n_samples=2", "eval.ks=[1,2]"]
    two, one = tmp_path / "sft2", tmp_path / "sft1"
    launch(2, "sft", f"hydra.run.dir={two}", *args)
    dynamo("sft", f"hydra.run.dir={one}", "device=cpu", *args)
    loss_two = [r["train/loss"] for r in _records(two / "metrics.jsonl") if "train/loss" in r]
    loss_one = [r["train/loss"] for r in _records(one / "metrics.jsonl") if "train/loss" in r]
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


@pytest.mark.parametrize("kind,zero_stage,refused", [("FSDP", 0, True), ("DEEPSPEED", 3, True), ("DEEPSPEED", 2, False),
                                                     ("MULTI_GPU", 0, False), ("MULTI_CPU", 0, False)])
def test_weight_sharding_engines_are_refused_in_one_line(kind, zero_stage, refused):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from dynamo_cli.errors import DynamoError
    from dynamo_cli.runtime.distributed import DataParallel

    accelerator = SimpleNamespace(process_index=0, num_processes=2, device=torch.device("cpu"), distributed_type=DistributedType[kind],
                                  state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage)))
    if refused:
        with pytest.raises(DynamoError, match="shards the weights.*use conf/accelerate/ddp.yaml or deepspeed_zero2.yaml"):
            DataParallel(accelerator).check_engine()
    else:
        DataParallel(accelerator).check_engine()


def test_an_empty_share_generates_nothing_without_error():
    """With more processes than problems (eval.max_problems=1 on 2 processes) a rank's share is empty."""
    from dynamo_cli.models.load import build_char_tokenizer

    empty = generate(None, build_char_tokenizer(), [], counts=torch.zeros(0, dtype=torch.long), max_new_tokens=4,
                     temperature=1.0, top_p=1.0, seed=1, max_batch_size=8)
    assert len(empty) == 0 and empty.texts == [] and empty.input_ids.shape == (0, 0)
