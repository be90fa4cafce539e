"""Automatic batch sizes: the memory estimates and the fit, by hand, and a plan on a real (tiny) model."""
import pytest
import torch

from dynamo_cli.runtime import resources
from dynamo_cli.runtime.resources import (
    ModelShape,
    fit_batch_size,
    generation_bytes_per_sequence,
    model_shape,
    optimizer_bytes,
    plan_batch_sizes,
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
