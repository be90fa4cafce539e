"""`dynamo export`: a checkpoint as one plain Hugging Face model dir, loadable with no dynamo and no peft.

A LoRA checkpoint is merged into its base (W + scale * B @ A); a full checkpoint is copied as it is.
`model.dtype` is the dtype written (`model.dtype=bfloat16` halves the size).
"""
from __future__ import annotations

from pathlib import Path

import torch

from dynamo_cli.config.recipes import ExportConfig
from dynamo_cli.models.load import count_parameters, is_peft_model, load_policy
from dynamo_cli.runtime import checkpoint


def run(cfg: ExportConfig, run_dir: Path) -> None:
    # load_policy merges a LoRA checkpoint given as model.path; a model.lora.enabled=true left on the
    # command line would put a fresh (identity) adapter back on top, which merging removes again.
    model, tokenizer = load_policy(cfg.model, torch.device("cpu"))
    if is_peft_model(model):
        model = model.merge_and_unload()
    target = Path(cfg.output) if cfg.output else run_dir / "model"
    checkpoint.save_checkpoint(target, model=model, tokenizer=tokenizer)
    total, _ = count_parameters(model)
    print(f"exported {cfg.model.path or cfg.model.name} ({total / 1e6:.2f}M params, {cfg.model.dtype}) to {target}")
