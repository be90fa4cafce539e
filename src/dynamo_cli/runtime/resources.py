"""Batch sizes that fit in memory, picked from the model's shape and the memory free on the device.

`*_batch_size: auto` in the config lands here; an integer there is used as given. The estimates are upper
bounds of the bytes one sequence adds (activations the backward keeps, after Korthikanti et al. 2022,
"Reducing Activation Recomputation in Large Transformer Models", plus the fp32 logits this code makes; the
KV cache and the sampling buffers for generation), and only `memory_fraction` of the free memory is planned.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

AUTO = "auto"


@dataclass(frozen=True)
class ModelShape:
    """What the memory of a decoder-only transformer's forward/backward depends on."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    dtype_bytes: int
    trainable_params: int


def model_shape(model: torch.nn.Module) -> ModelShape:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    c = base.config
    heads = c.num_attention_heads
    param = next(model.parameters())
    return ModelShape(
        num_layers=c.num_hidden_layers, hidden_size=c.hidden_size,
        intermediate_size=getattr(c, "intermediate_size", None) or 4 * c.hidden_size, num_heads=heads,
        num_kv_heads=getattr(c, "num_key_value_heads", None) or heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads, vocab_size=c.vocab_size,
        dtype_bytes=param.element_size(), trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad))


def generation_bytes_per_sequence(shape: ModelShape, *, prompt_tokens: int, new_tokens: int) -> int:
    """KV cache of the whole sequence, one layer's prefill activations, fp32 logits and the sampler's buffers."""
    length = prompt_tokens + new_tokens
    kv_cache = 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * length * shape.dtype_bytes
    prefill = prompt_tokens * (4 * shape.hidden_size + 3 * shape.intermediate_size + 2 * shape.num_heads * prompt_tokens) * shape.dtype_bytes
    sampling = shape.vocab_size * (4 + 4 + 8 + 8 + 8)  # logits, probabilities, float64 CDF, top-p sort values and order
    return kv_cache + prefill + sampling


def training_bytes_per_sequence(shape: ModelShape, *, tokens: int, completion_tokens: int) -> int:
    """Activations the backward keeps for one sequence of `tokens`, plus the fp32 logits over its completion
    (logits, log-softmax, softmax for the entropy, and their gradient).

    Per token and layer of a Llama-style block: two RMSNorms (input and output, 2h each), q/k/v (h + 2 kv)
    and their rotary copies (h + kv), attention scores and probabilities (2 a s, eager attention), the
    context (h), SwiGLU's gate, up, activation and product (4 i); plus the block's input (h)."""
    kv = shape.num_kv_heads * shape.head_dim
    per_token_per_layer = (8 * shape.hidden_size + 3 * kv + 4 * shape.intermediate_size + 2 * shape.num_heads * tokens) * shape.dtype_bytes
    activations = shape.num_layers * tokens * per_token_per_layer
    logits = completion_tokens * shape.vocab_size * 4 * 4
    return activations + logits


def optimizer_bytes(shape: ModelShape) -> int:
    """Gradients (model dtype) and AdamW's two fp32 moments: allocated at the first step, so not yet free memory."""
    return shape.trainable_params * (shape.dtype_bytes + 8)


def free_memory(device: torch.device) -> int:
    """Bytes that can still be allocated: the GPU's free memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def fit_batch_size(*, free_bytes: int, reserved_bytes: int, bytes_per_sequence: int, memory_fraction: float, most: int) -> int:
    """The largest batch whose estimate fits in `memory_fraction` of what is free after `reserved_bytes`; in [1, most]."""
    usable = max(0.0, (free_bytes - reserved_bytes) * memory_fraction)
    return int(max(1, min(most, usable // max(1, bytes_per_sequence))))


@dataclass(frozen=True)
class BatchPlan:
    generation: int  # sequences generated at once (rollouts and eval); 0 when nothing generates
    training: int  # sequences per forward/backward (and per gradient-free log-prob pass); 0 when nothing trains
    note: str  # one line for the log: what was chosen, and how

    def metrics(self) -> dict[str, float]:
        named = {"resources/generation_batch": self.generation, "resources/train_micro_batch": self.training}
        return {key: value for key, value in named.items() if value}


def plan_batch_sizes(model: torch.nn.Module, device: torch.device, *, generation: int | str | None, training: int | str | None,
                     prompt_tokens: int, new_tokens: int, most_generation: int, most_training: int,
                     memory_fraction: float) -> BatchPlan:
    """Resolve `auto` batch sizes (an int is kept as given); None: not needed (eval trains nothing, sft generates
    only in its eval).
    Call after the model is on its device and before the optimiser's first step."""
    shape = model_shape(model)
    free = free_memory(device)
    reserved = optimizer_bytes(shape) if training is not None else 0
    parts, chosen = [], {"generation": 0, "training": 0}
    for name, value, per_sequence, most in (
        ("generation", generation, generation_bytes_per_sequence(shape, prompt_tokens=prompt_tokens, new_tokens=new_tokens), most_generation),
        ("training", training, training_bytes_per_sequence(shape, tokens=prompt_tokens + new_tokens, completion_tokens=new_tokens), most_training),
    ):
        if value is None:
            continue
        if value == AUTO:
            chosen[name] = fit_batch_size(free_bytes=free, reserved_bytes=reserved, bytes_per_sequence=per_sequence,
                                          memory_fraction=memory_fraction, most=most)
            parts.append(f"{name} {chosen[name]} (auto: ~{per_sequence / 2**20:.2f} MiB/sequence)")
        else:
            chosen[name] = int(value)
            parts.append(f"{name} {chosen[name]} (set)")
    where = "GPU" if device.type == "cuda" else "host"
    note = (f"batch sizes: {', '.join(parts)}; {free / 2**30:.1f} GiB free on the {where}, "
            f"planning {memory_fraction:.0%} of it")
    return BatchPlan(generation=chosen["generation"], training=chosen["training"], note=note)


def longest_prompt(tokenizer, task, problems: list, *, sample: int = 2000) -> int:
    """Tokens in the longest prompt of an evenly spaced sample of at most `sample` problems."""
    picked = problems[::max(1, len(problems) // sample)]
    encoded = tokenizer([task.prompt_text(p, tokenizer) for p in picked], add_special_tokens=False)["input_ids"]
    return max((len(ids) for ids in encoded), default=1)
