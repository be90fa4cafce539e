"""AdamW and its learning-rate schedule (linear warm-up, then constant, cosine or linear decay)."""
from __future__ import annotations

import math

import torch

from dynamo_cli.config.algorithm import OptimConfig

SCHEDULES = ("constant", "cosine", "linear")  # optim.schedule: after the warm-up


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """Multiplier of the base lr at `step` (0-based optimiser step)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, *, total_steps: int):
    """AdamW without weight decay on biases and norms (the usual split), and its LambdaLR schedule."""
    decay, no_decay = [], []
    for _name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, warmup_steps=cfg.warmup_steps, total_steps=total_steps, schedule=cfg.schedule, min_lr_ratio=cfg.min_lr_ratio))
    return optimizer, scheduler


def clip_gradients(model: torch.nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm (0 = no clipping) and return the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm)
