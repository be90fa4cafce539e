"""Automatic batch sizes: the memory estimates and the fit, by hand, and a plan on a real (tiny) model; eager and SDPA
attention, gradient checkpointing, mixed precision, and the one line for a model that does not fit."""
import dataclasses

import pytest
import torch

from dynamo_cli.errors import DynamoError
from dynamo_cli.runtime import resources
from dynamo_cli.runtime.resources import (
    ModelShape,
    fit_batch_size,
    generation_bytes_per_sequence,
    lora_params,
    model_shape,
    optimizer_bytes,
    plan_batch_sizes,
    smallest_fix,
    training_bytes_per_sequence,
)

SHAPE = ModelShape(num_layers=2, hidden_size=8, intermediate_size=16, num_heads=2, num_kv_heads=1, head_dim=4,
                   vocab_size=10, dtype_bytes=4, trainable_params=1000)
GiB, MiB = 2**30, 2**20


def test_fit_batch_size_by_hand():
    # (10 GiB free - 2 GiB reserved) * 0.5 = 4 GiB; / 100 MiB = 40.96 -> 40
    assert fit_batch_size(free_bytes=10 * GiB, reserved_bytes=2 * GiB, bytes_per_sequence=100 * MiB, memory_fraction=0.5, most=1000) == 40
    assert fit_batch_size(free_bytes=10 * GiB, reserved_bytes=2 * GiB, bytes_per_sequence=100 * MiB, memory_fraction=0.5, most=32) == 32
    assert fit_batch_size(free_bytes=GiB, reserved_bytes=2 * GiB, bytes_per_sequence=MiB, memory_fraction=0.5, most=64) == 1  # never 0


def test_estimates_by_hand():
    # KV: 2 * 2 layers * 1 kv head * 4 dims * (3 + 5) tokens * 4 bytes = 512
    # prefill: 3 tokens * (4*8 + 3*16 + 2*2*3) * 4 = 3 * 92 * 4 = 1104; sampling: 10 * 32 = 320
    assert generation_bytes_per_sequence(SHAPE, prompt_tokens=3, new_tokens=5) == 512 + 1104 + 320
    # activations: 2 layers * 8 tokens * (8*8 + 3*4 + 4*16 + 2*2*8) * 4 = 16 * 172 * 4 = 11008; logits: 5 * 10 * 16 = 800
    assert training_bytes_per_sequence(SHAPE, tokens=8, completion_tokens=5) == 11008 + 800
    assert optimizer_bytes(SHAPE) == 1000 * 12
    longer = training_bytes_per_sequence(SHAPE, tokens=16, completion_tokens=5)
    assert longer > 2 * 11008  # attention makes it superlinear in the length


def _tiny():
    from dynamo_cli.config.model import TinyModelConfig
    from dynamo_cli.models.load import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer()
    return build_tiny_model(TinyModelConfig(), tokenizer)


def test_model_shape_of_the_tiny_model_and_of_its_lora_version():
    from dynamo_cli.config.model import LoraConfig
    from dynamo_cli.models.load import add_lora

    model = _tiny()
    shape = model_shape(model)
    assert (shape.num_layers, shape.hidden_size, shape.intermediate_size, shape.num_heads, shape.head_dim) == (3, 192, 576, 4, 48)
    assert shape.dtype_bytes == 4 and shape.trainable_params == sum(p.numel() for p in model.parameters())
    lora = model_shape(add_lora(model, LoraConfig(enabled=True, r=4)))
    assert lora.num_layers == 3 and 0 < lora.trainable_params < shape.trainable_params / 10


def test_plan_keeps_explicit_sizes_and_fits_auto_ones_to_free_memory(monkeypatch):
    model = _tiny()
    kwargs = dict(prompt_tokens=10, new_tokens=8, most_generation=512, most_training=512, memory_fraction=0.5)
    monkeypatch.setattr(resources, "free_memory", lambda device: 64 * GiB)
    roomy = plan_batch_sizes(model, torch.device("cpu"), generation="auto", training="auto", **kwargs)
    assert (roomy.generation, roomy.training) == (512, 512)  # capped by the work there is
    assert "generation 512 (auto" in roomy.note and "64.0 GiB free on the host" in roomy.note
    fixed = plan_batch_sizes(model, torch.device("cpu"), generation=7, training=3, **kwargs)
    assert (fixed.generation, fixed.training) == (7, 3) and "training 3 (set)" in fixed.note

    shape = model_shape(model)
    per_training = training_bytes_per_sequence(shape, tokens=18, completion_tokens=8)
    free = optimizer_bytes(shape) + 2 * 20 * per_training + 1  # room for exactly 20 training sequences at 50%
    monkeypatch.setattr(resources, "free_memory", lambda device: free)
    tight = plan_batch_sizes(model, torch.device("cpu"), generation="auto", training="auto", **kwargs)
    assert tight.training == 20
    assert tight.generation < 512
    assert tight.metrics() == {"resources/generation_batch": tight.generation, "resources/train_micro_batch": 20}
    eval_only = plan_batch_sizes(model, torch.device("cpu"), generation="auto", training=None, **kwargs)
    assert eval_only.training == 0 and "training" not in eval_only.note and eval_only.generation >= tight.generation


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_free_memory_on_cuda_is_the_devices():
    assert 0 < resources.free_memory(torch.device("cuda")) <= torch.cuda.get_device_properties(0).total_memory


def test_sdpa_and_checkpointing_estimates_by_hand():
    # SDPA keeps no s×s scores: per token and layer (8*8 + 3*4 + 4*16) * 4 bytes + 4 bytes of log-sum-exp per head = 560 + 8
    sdpa = dataclasses.replace(SHAPE, attention="sdpa")
    assert training_bytes_per_sequence(sdpa, tokens=8, completion_tokens=5) == 2 * 8 * 568 + 800
    assert training_bytes_per_sequence(sdpa, tokens=16, completion_tokens=5) == 2 * 16 * 568 + 800  # linear in the length
    # prefill without scores: 3 * (4*8 + 3*16) * 4 = 960 (eager: 1104)
    assert generation_bytes_per_sequence(sdpa, prompt_tokens=3, new_tokens=5) == 512 + 960 + 320
    # checkpointing: each layer keeps its input (h = 8 values, 32 bytes a token) and one layer's activations exist at once
    checkpointed = dataclasses.replace(sdpa, checkpointing=True)
    assert training_bytes_per_sequence(checkpointed, tokens=8, completion_tokens=5) == 8 * (2 * 32 + 568) + 800
    # bf16 compute over float32 masters: activations at 2 bytes, the head's bf16 output on top of the float32 logits,
    # and gradients + AdamW moments at 4 bytes a weight
    mixed = dataclasses.replace(sdpa, dtype_bytes=2, param_bytes=4)
    assert training_bytes_per_sequence(mixed, tokens=8, completion_tokens=5) == 2 * 8 * (140 * 2 + 8) + 5 * 10 * 18
    assert optimizer_bytes(mixed) == 1000 * 12 and optimizer_bytes(dataclasses.replace(SHAPE, dtype_bytes=2)) == 1000 * 6


def test_the_tiny_model_uses_sdpa_and_its_mixed_precision_shape():
    from dynamo_cli.config.model import TinyModelConfig
    from dynamo_cli.models.load import load_policy

    model, _ = load_policy(TinyModelConfig(dtype="bfloat16", gradient_checkpointing=True), torch.device("cpu"), master_weights="float32")
    shape = model_shape(model)
    assert (shape.attention, shape.dtype_bytes, shape.param_bytes, shape.checkpointing) == ("sdpa", 2, 4, True)
    assert shape.total_params == shape.trainable_params == sum(p.numel() for p in model.parameters())


def test_a_model_that_does_not_fit_stops_with_the_smallest_change_that_would(monkeypatch):
    model = _tiny()
    shape = model_shape(model)
    kwargs = dict(prompt_tokens=10, new_tokens=8, most_generation=64, most_training=64, memory_fraction=0.5)
    one = training_bytes_per_sequence(shape, tokens=18, completion_tokens=8)
    # room for the optimiser state and half a sequence: even one does not fit (auto used to fall back to batch 1)
    monkeypatch.setattr(resources, "free_memory", lambda device: optimizer_bytes(shape) + one // 2)
    with pytest.raises(DynamoError) as refused:
        plan_batch_sizes(model, torch.device("cpu"), generation="auto", training="auto", **kwargs)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("the model does not fit for training: 1 sequence(s) of 18 tokens need")
    assert message.endswith("the smallest change that fits: model.gradient_checkpointing=true")
    # a micro-batch set too large: the largest that fits is named first
    monkeypatch.setattr(resources, "free_memory", lambda device: optimizer_bytes(shape) + 3 * one + one // 2)
    with pytest.raises(DynamoError, match=r"the smallest change that fits: algorithm.micro_batch_size=3$"):
        plan_batch_sizes(model, torch.device("cpu"), generation="auto", training=8, **kwargs)
    with pytest.raises(DynamoError, match=r"the smallest change that fits: trainer.micro_batch_size=3$"):
        plan_batch_sizes(model, torch.device("cpu"), generation=None, training=8, micro_batch_key="trainer.micro_batch_size", **kwargs)


def test_smallest_fix_tries_checkpointing_then_sharding_then_lora():
    big = ModelShape(num_layers=28, hidden_size=1536, intermediate_size=8960, num_heads=12, num_kv_heads=2, head_dim=128,
                     vocab_size=151936, dtype_bytes=2, trainable_params=1_540_000_000, param_bytes=4, total_params=1_540_000_000,
                     attention="sdpa")
    fix = dict(tokens=1024, completion_tokens=512, micro_batch=1, shards=1, micro_batch_key="algorithm.micro_batch_size")
    weights, state = 1_540_000_000 * 4, optimizer_bytes(big)
    activations = training_bytes_per_sequence(big, tokens=1024, completion_tokens=512)
    checkpointed = training_bytes_per_sequence(dataclasses.replace(big, checkpointing=True), tokens=1024, completion_tokens=512)
    assert checkpointed < activations
    # free = what is left once the weights are loaded: checkpointing is enough when its activations fit
    assert smallest_fix(big, free_bytes=state + checkpointed, gpus=1, **fix) == "model.gradient_checkpointing=true"
    # not even that, but 8 GPUs: FSDP2 leaves 1/8 of weights and state on each
    short = state // 2
    assert smallest_fix(big, free_bytes=short, gpus=8, **fix) == "FSDP2 over the 8 GPUs (conf/accelerate/fsdp2.yaml)"
    # one GPU: LoRA's adapter state is tiny next to the full model's
    assert smallest_fix(big, free_bytes=short, gpus=1, **fix) == "model.lora.enabled=true"
    assert smallest_fix(big, free_bytes=-weights, gpus=1, **fix).startswith("none of a smaller micro-batch")
    assert lora_params(SHAPE, rank=1) == 2 * (2 * 16 + 2 * (8 + 4) + 3 * (8 + 16))
