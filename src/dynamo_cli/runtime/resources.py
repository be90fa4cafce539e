"""Batch sizes that fit in memory, picked from the model's shape and the memory free on the device.

`*_batch_size: auto` in the config lands here; an integer there is used as given. The estimates are upper
bounds of the bytes one sequence adds (activations the backward keeps, after Korthikanti et al. 2022,
"Reducing Activation Recomputation in Large Transformer Models", plus the fp32 logits this code makes; the
KV cache and the sampling buffers for generation), and only `memory_fraction` of the free memory is planned.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from dynamo_cli.errors import DynamoError

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
    dtype_bytes: int  # the compute dtype's: activations, KV cache (model.dtype under mixed precision)
    trainable_params: int
    param_bytes: int | None = None  # the weights' dtype (float32 masters under mixed precision); None: dtype_bytes
    total_params: int = 0  # every parameter, trained or frozen
    attention: str = "eager"  # the attention kernel (config._attn_implementation): eager keeps the s×s scores, sdpa/flash do not
    checkpointing: bool = False  # model.gradient_checkpointing: the backward recomputes each layer's activations

    @property
    def weight_bytes_per_param(self) -> int:
        return self.param_bytes if self.param_bytes is not None else self.dtype_bytes


def model_shape(model: torch.nn.Module) -> ModelShape:
    from dynamo_cli.models import precision

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    c = base.config
    heads = c.num_attention_heads
    param = next(model.parameters())
    autocast = precision.marked_dtype(model)
    return ModelShape(
        num_layers=c.num_hidden_layers, hidden_size=c.hidden_size,
        intermediate_size=getattr(c, "intermediate_size", None) or 4 * c.hidden_size, num_heads=heads,
        num_kv_heads=getattr(c, "num_key_value_heads", None) or heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads, vocab_size=c.vocab_size,
        dtype_bytes=autocast.itemsize if autocast is not None else param.element_size(),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad), param_bytes=param.element_size(),
        total_params=sum(p.numel() for p in model.parameters()),
        attention=getattr(c, "_attn_implementation", None) or "eager",
        checkpointing=checkpointing(base))


def checkpointing(model: torch.nn.Module) -> bool:
    """Whether the model recomputes its layers in the backward (transformers 5 renamed the flag)."""
    flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, flag, False))


def keeps_scores(shape: ModelShape) -> bool:
    """Eager attention materialises the (heads, s, s) scores and probabilities; SDPA's and flash attention's fused kernels
    keep only the output and one log-sum-exp per head and token."""
    return shape.attention == "eager"


def generation_bytes_per_sequence(shape: ModelShape, *, prompt_tokens: int, new_tokens: int) -> int:
    """KV cache of the whole sequence, one layer's prefill activations, fp32 logits and the sampler's buffers."""
    length = prompt_tokens + new_tokens
    kv_cache = 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * length * shape.dtype_bytes
    scores = 2 * shape.num_heads * prompt_tokens if keeps_scores(shape) else 0
    prefill = prompt_tokens * (4 * shape.hidden_size + 3 * shape.intermediate_size + scores) * shape.dtype_bytes
    sampling = shape.vocab_size * (4 + 4 + 8 + 8 + 8)  # logits, probabilities, float64 CDF, top-p sort values and order
    return kv_cache + prefill + sampling


def layer_bytes_per_token(shape: ModelShape, *, tokens: int) -> int:
    """Activations one Llama-style block keeps for the backward, per token: two RMSNorms (input and output, 2h each),
    q/k/v (h + 2 kv) and their rotary copies (h + kv), the context (h), SwiGLU's gate, up, activation and product (4 i),
    the block's input (h); and the attention's own: eager's scores and probabilities (2 a s), or a fused kernel's
    float32 log-sum-exp (a)."""
    kv = shape.num_kv_heads * shape.head_dim
    attention = 2 * shape.num_heads * tokens * shape.dtype_bytes if keeps_scores(shape) else 4 * shape.num_heads
    return (8 * shape.hidden_size + 3 * kv + 4 * shape.intermediate_size) * shape.dtype_bytes + attention


def training_bytes_per_sequence(shape: ModelShape, *, tokens: int, completion_tokens: int) -> int:
    """Activations the backward keeps for one sequence of `tokens`, plus the logits over its completion (the head's output
    in the compute dtype when narrower, then float32 logits, log-softmax, softmax for the entropy, and their gradient).

    Without checkpointing every layer keeps its activations (`layer_bytes_per_token`); with it each layer keeps its input
    (h) and one layer's activations exist at a time, while the backward recomputes it."""
    per_layer = layer_bytes_per_token(shape, tokens=tokens)
    if shape.checkpointing:
        activations = tokens * (shape.num_layers * shape.hidden_size * shape.dtype_bytes + per_layer)
    else:
        activations = shape.num_layers * tokens * per_layer
    logits = completion_tokens * shape.vocab_size * (4 * 4 + (shape.dtype_bytes if shape.dtype_bytes < 4 else 0))
    return activations + logits


def optimizer_bytes(shape: ModelShape) -> int:
    """Gradients and AdamW's two moments, each in the weights' dtype (float32 masters: 12 bytes per trained parameter):
    allocated at the first step, so not yet missing from the free memory."""
    return shape.trainable_params * 3 * shape.weight_bytes_per_param


def lora_params(shape: ModelShape, *, rank: int = 16) -> int:
    """Parameters of a rank-`rank` LoRA adapter on all seven projections of every layer (q, o: h -> h; k, v: h -> kv;
    gate, up: h -> i; down: i -> h), r (in + out) each."""
    h, kv, i = shape.hidden_size, shape.num_kv_heads * shape.head_dim, shape.intermediate_size
    return shape.num_layers * rank * (2 * (h + h) + 2 * (h + kv) + 3 * (h + i))


def training_room(shape: ModelShape, *, free_bytes: int, shards: int) -> int:
    """Bytes left for a micro-batch's activations: the free memory, plus what sharding the weights over `shards` processes
    frees (FSDP2 keeps 1/shards of them between forwards), minus this rank's share of gradients and AdamW state."""
    weights = shape.total_params * shape.weight_bytes_per_param
    return int(free_bytes + weights * (1 - 1 / shards) - optimizer_bytes(shape) / shards)


def smallest_fix(shape: ModelShape, *, free_bytes: int, tokens: int, completion_tokens: int, micro_batch: int, shards: int,
                 gpus: int, micro_batch_key: str) -> str:
    """The least change that lets one training micro-batch fit, tried in this order: a smaller micro-batch, gradient
    checkpointing, FSDP2 over every visible GPU, LoRA, then checkpointing with FSDP2 or LoRA. One phrase."""
    def fits(s: ModelShape, *, n: int = shards, batch: int = 1) -> bool:
        return training_room(s, free_bytes=free_bytes, shards=n) >= batch * training_bytes_per_sequence(
            s, tokens=tokens, completion_tokens=completion_tokens)

    checkpointed = dataclasses.replace(shape, checkpointing=True)
    lora = dataclasses.replace(shape, trainable_params=lora_params(shape))
    checkpoint, fsdp = "model.gradient_checkpointing=true", f"FSDP2 over the {gpus} GPUs (conf/accelerate/fsdp2.yaml)"
    tries = [(f"{micro_batch_key}={b}", shape, shards, b) for b in range(micro_batch - 1, 0, -1)]
    if not shape.checkpointing:
        tries.append((checkpoint, checkpointed, shards, 1))
    if gpus > shards:
        tries.append((fsdp, shape, gpus, 1))
    if lora.trainable_params < shape.trainable_params:
        tries.append(("model.lora.enabled=true", lora, shards, 1))
    if not shape.checkpointing:
        tries += [(f"{checkpoint} with {fsdp}", checkpointed, gpus, 1)] if gpus > shards else []
        tries.append((f"{checkpoint} with model.lora.enabled=true", dataclasses.replace(lora, checkpointing=True), shards, 1))
    for change, s, n, batch in tries:
        if fits(s, n=n, batch=batch):
            return change
    return "none of a smaller micro-batch, gradient checkpointing, FSDP2 or LoRA is enough: a smaller model or a larger GPU"


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
                     memory_fraction: float, shards: int = 1, micro_batch_key: str = "algorithm.micro_batch_size") -> BatchPlan:
    """Resolve `auto` batch sizes (an int is kept as given); None: not needed (eval trains nothing, sft generates
    only in its eval).

    Call after the model is on its device (and a vLLM engine holds its share) and before the optimiser's first step.
    `shards`: the processes FSDP2 will shard the weights and training state over (1: none); the training plan counts
    this rank's share of them. A micro-batch of one sequence (or the one set) that does not fit even in all the free
    memory stops the run with one line naming the smallest change that would fit (`smallest_fix`)."""
    shape = model_shape(model)
    free = free_memory(device)
    train_free = free + shape.total_params * shape.weight_bytes_per_param * (1 - 1 / shards) if training is not None else free
    reserved = optimizer_bytes(shape) / shards if training is not None else 0
    parts, chosen = [], {"generation": 0, "training": 0}
    for name, value, per_sequence, most, room in (
        ("generation", generation, generation_bytes_per_sequence(shape, prompt_tokens=prompt_tokens, new_tokens=new_tokens),
         most_generation, free),
        ("training", training, training_bytes_per_sequence(shape, tokens=prompt_tokens + new_tokens, completion_tokens=new_tokens),
         most_training, train_free),
    ):
        if value is None:
            continue
        if name == "training" and room - reserved < per_sequence * (1 if value == AUTO else int(value)):
            gpus = torch.cuda.device_count() if device.type == "cuda" else 1
            fix = smallest_fix(shape, free_bytes=int(free), tokens=prompt_tokens + new_tokens, completion_tokens=new_tokens,
                               micro_batch=1 if value == AUTO else int(value), shards=shards, gpus=gpus, micro_batch_key=micro_batch_key)
            raise DynamoError(
                f"the model does not fit for training: {1 if value == AUTO else int(value)} sequence(s) of {prompt_tokens + new_tokens} "
                f"tokens need ~{per_sequence * (1 if value == AUTO else int(value)) / 2**30:.2f} GiB of activations and logits on top of "
                f"{reserved / 2**30:.2f} GiB of gradients and AdamW state, and {room / 2**30:.2f} GiB are free on the "
                f"{'GPU' if device.type == 'cuda' else 'host'}; the smallest change that fits: {fix}")
        if value == AUTO:
            chosen[name] = fit_batch_size(free_bytes=room, reserved_bytes=reserved, bytes_per_sequence=per_sequence,
                                          memory_fraction=memory_fraction, most=most)
            parts.append(f"{name} {chosen[name]} (auto: ~{per_sequence / 2**20:.2f} MiB/sequence)")
        else:
            chosen[name] = int(value)
            parts.append(f"{name} {chosen[name]} (set)")
    where = "GPU" if device.type == "cuda" else "host"
    how = []
    if shape.dtype_bytes != shape.weight_bytes_per_param:
        how.append(f"{shape.weight_bytes_per_param * 8}-bit weights, {shape.dtype_bytes * 8}-bit compute")
    if shape.checkpointing:
        how.append("gradient checkpointing")
    if shards > 1:
        how.append(f"state sharded over {shards}")
    note = (f"batch sizes: {', '.join(parts)}; {free / 2**30:.1f} GiB free on the {where}, "
            f"planning {memory_fraction:.0%} of it{f' ({chr(44).join(how)})' if how else ''}")
    return BatchPlan(generation=chosen["generation"], training=chosen["training"], note=note)


def longest_prompt(tokenizer, task, problems: list, *, chunk: int = 4096) -> int:
    """Tokens in the longest prompt of all `problems` (a sample would miss the longest one, and a prompt longer than the
    rollout engine's max_model_len fails mid-run), tokenized in chunks."""
    longest = 1
    for start in range(0, len(problems), chunk):
        texts = [task.prompt_text(p, tokenizer) for p in problems[start:start + chunk]]
        longest = max(longest, *(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]))
    return longest
