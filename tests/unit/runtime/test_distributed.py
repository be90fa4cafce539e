"""Data parallelism: the pure sharding helpers, counter-based sampling, and real 2-process runs (gloo on CPU)
compared with 1-process runs of the same global batch and seed."""
from __future__ import annotations

import pytest
import torch

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


def test_a_device_that_cannot_be_had_is_said_in_one_line():
    from dynamo_cli.runtime.distributed import device_problem

    gpu_launch = {"WORLD_SIZE": "4", "ACCELERATE_USE_CPU": "False"}
    problem, fatal = device_problem("cuda", cuda=False, torch_version="2.13.0+cpu", env={})
    assert fatal and problem == ("device=cuda but torch 2.13.0+cpu sees no CUDA device (a CPU build of torch, or no GPU visible): "
                                 "install torch's CUDA build or choose device=cpu")
    assert device_problem("cuda:1", cuda=False, torch_version="2.13.0+cpu", env={})[1]
    problem, fatal = device_problem("auto", cuda=False, torch_version="2.13.0+cpu", env=gpu_launch)
    assert not fatal and problem.startswith("device=auto: torch 2.13.0+cpu sees no CUDA device, so the 4 processes of this launch run on CPU")
    assert device_problem("auto", cuda=False, torch_version="2.13.0+cpu", env={"WORLD_SIZE": "1"}) == (None, False)  # one process
    assert device_problem("auto", cuda=False, torch_version="x", env={**gpu_launch, "ACCELERATE_USE_CPU": "true"}) == (None, False)
    assert device_problem("cpu", cuda=False, torch_version="x", env=gpu_launch) == (None, False)  # asked for: cpu_ddp.yaml
    assert device_problem("cuda", cuda=True, torch_version="x", env=gpu_launch) == (None, False)


def test_the_replica_fingerprint_needs_no_float64_copy_and_is_the_float64_sums():
    from dynamo_cli.runtime.distributed import parameter_fingerprint

    weight = torch.randn(1000, 37, dtype=torch.bfloat16)
    chunked = parameter_fingerprint(weight, chunk=999)  # 38 chunks of at most 999 values
    whole = torch.stack([weight.double().sum(), weight.double().square().sum()])
    assert chunked.dtype == torch.float64 and torch.allclose(chunked, whole, rtol=1e-12)
    assert torch.equal(parameter_fingerprint(weight, chunk=999), chunked)  # the same order every time: replicas compare exactly
