"""Which models' training state fits which GPUs under DDP, DDP + LoRA and FSDP2: arithmetic, not a measurement.

Bytes per GPU of the state that lives through a whole `dynamo train` step (weights, gradients, AdamW's two moments,
a KL reference), for Llama-shaped models whose parameter counts come from their published shapes. torch's AdamW
keeps its moments in the parameter's dtype, so a trained parameter costs 4 × the weights' bytes: 16 in float32, 8 in
bfloat16. With model.dtype=bfloat16 the weights are float32 masters by default (models/precision.py): the float32
columns, plus rollout=hf's bf16 generation copy; the bfloat16 columns are optim.master_weights=model.

    DDP          every rank: weights + gradients + 2 moments = 4·w·P          (+ w·P for a KL reference copy)
    DDP + LoRA   every rank: frozen weights w·P + 4·w·A for the adapter's A parameters (the reference is free:
                 the base with the adapter disabled)
    FSDP2 on N   the rollout phase is the peak: the full weights gathered for generation (w·P) on top of the
                 rank's shards of weights and moments (3·w·P/N; gradients are freed after each step);
                 during the update, 4·w·P/N plus the root unit (embeddings, head) and two gathered layers and
                 one layer's unsharded gradient (+ w·P/N for a sharded reference, either phase)

Activations, the KV cache and logits come on top; `auto` batch sizes fit them into what is left. "fits" below
means the state takes at most 80% of the GPU, leaving at least 20% for them and the CUDA context.

    python -m bench.model_fits
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

GB = 1e9
GPUS = {"24 GB": 24, "40 GB": 40, "80 GB": 80, "141 GB": 141}  # RTX 4090 / A100-40 / A100-80, H100 / H200
HEADROOM = 0.8  # the share of a GPU the long-lived state may take


@dataclass(frozen=True)
class LlamaShape:
    name: str
    hidden: int
    intermediate: int
    layers: int
    kv_dim: int  # key/value heads × head dim (grouped-query attention: less than hidden)
    vocab: int
    tied: bool  # input embedding and output head share one matrix


MODELS = [  # the shapes in each model's published config.json
    LlamaShape("SmolLM2-135M", hidden=576, intermediate=1536, layers=30, kv_dim=192, vocab=49152, tied=True),
    LlamaShape("SmolLM2-1.7B", hidden=2048, intermediate=8192, layers=24, kv_dim=2048, vocab=49152, tied=True),
    LlamaShape("Llama-3.1-8B", hidden=4096, intermediate=14336, layers=32, kv_dim=1024, vocab=128256, tied=False),
    LlamaShape("Llama-3.1-70B", hidden=8192, intermediate=28672, layers=80, kv_dim=1024, vocab=128256, tied=False),
]


def llama_params(m: LlamaShape) -> int:
    """Embeddings (and an untied head), per layer q/k/v/o + gate/up/down + two RMSNorms, the final norm."""
    attention = m.hidden * (2 * m.hidden + 2 * m.kv_dim)  # q, o: h×h; k, v: h×kv
    mlp = 3 * m.hidden * m.intermediate
    return m.vocab * m.hidden * (1 if m.tied else 2) + m.layers * (attention + mlp + 2 * m.hidden) + m.hidden


def lora_params(m: LlamaShape, r: int = 16) -> int:
    """A rank-r adapter (A: in×r, B: r×out) on all seven projections of every layer (model.lora's defaults)."""
    h, kv, i = m.hidden, m.kv_dim, m.intermediate
    per_layer = r * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 3)  # q, o; k, v; gate, up, down
    return m.layers * per_layer


def state_bytes(m: LlamaShape, *, engine: str, dtype_bytes: int, world_size: int = 1, kl_reference: bool = False) -> float:
    """Peak bytes per GPU of the long-lived training state (see the module docstring for each formula)."""
    p, w = llama_params(m), dtype_bytes
    if engine == "ddp":
        return 4 * w * p + (w * p if kl_reference else 0)
    if engine == "ddp_lora":
        return w * p + 4 * w * lora_params(m)
    if engine == "fsdp2":
        embeddings = m.vocab * m.hidden * (1 if m.tied else 2)  # the root unit: gathered from forward to backward
        layer = (p - embeddings - m.hidden) / m.layers
        rollout = w * p + 3 * w * p / world_size
        update = 4 * w * p / world_size + w * embeddings + 3 * w * layer  # + two gathered layers, one layer's gradient
        return max(rollout, update) + (w * p / world_size if kl_reference else 0)
    raise ValueError(f"engine={engine!r}: one of ddp, ddp_lora, fsdp2")


def smallest_gpu(nbytes: float) -> str:
    return next((name for name, size in GPUS.items() if nbytes <= HEADROOM * size * GB), "none")


def table(world_size: int = 8) -> list[str]:
    columns = [("DDP fp32", "ddp", 4), ("DDP bf16", "ddp", 2), ("DDP+LoRA bf16", "ddp_lora", 2),
               (f"FSDP2×{world_size} fp32", "fsdp2", 4), (f"FSDP2×{world_size} bf16", "fsdp2", 2)]
    lines = ["| model | params | " + " | ".join(c[0] for c in columns) + " |", "|---|---|" + "---|" * len(columns)]
    for m in MODELS:
        cells = []
        for _, engine, w in columns:
            nbytes = state_bytes(m, engine=engine, dtype_bytes=w, world_size=world_size)
            cells.append(f"{nbytes / GB:.1f} GB ({smallest_gpu(nbytes)})")
        lines.append(f"| {m.name} | {llama_params(m) / 1e9:.2f} B | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=8, help="GPUs FSDP2 shards over")
    args = parser.parse_args(argv)
    lines = table(args.world_size)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
