"""Atomic checkpoints and exact resume.

A checkpoint dir holds the model and tokenizer in Hugging Face format plus `trainer_state.pt` (optimiser,
scheduler, allocator state, step and RNG states). It is written to a temporary dir, fsynced, then
renamed into place, so a crash never leaves a half-written `step-N` or replaces a good `final`.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from dynamo_cli import atomic
from dynamo_cli.errors import DynamoError
from dynamo_cli.models import save_checkpoint_files

TRAINER_STATE = "trainer_state.pt"


def save_checkpoint(directory: Path, *, model, tokenizer, trainer_state: Optional[dict[str, Any]] = None,
                    extra_models: Optional[dict[str, Any]] = None, staged: Optional[dict[str, Path]] = None) -> Path:
    """The policy in HF format at the top of `directory`; each extra module (a critic) in `directory/<name>/`;
    each `staged` dir (written beforehand by every rank: FSDP2's optimiser shards) moved in as `directory/<name>/`."""
    def write(tmp: Path) -> None:
        for name, path in (staged or {}).items():
            os.replace(path, tmp / name)
        save_checkpoint_files(model, tokenizer, tmp)
        for name, module in (extra_models or {}).items():
            save_checkpoint_files(module, tokenizer, tmp / name)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)

    return atomic.write_dir(Path(directory), write)


def step_dirs(checkpoint_root: Path) -> list[Path]:
    """Complete `step-N` checkpoints, oldest first."""
    found = [p for p in Path(checkpoint_root).glob("step-*") if p.is_dir() and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def prune(checkpoint_root: Path, keep_last: int) -> None:
    for old in step_dirs(checkpoint_root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def latest(checkpoint_root: Path) -> Optional[Path]:
    """The newest resumable checkpoint: `final` of a finished run (nothing left to train), else the last step-N."""
    final = Path(checkpoint_root) / "final"
    if (final / TRAINER_STATE).is_file():
        return final
    dirs = step_dirs(checkpoint_root)
    return dirs[-1] if dirs else None


def load_trainer_state(directory: Path) -> dict[str, Any]:
    return torch.load(Path(directory) / TRAINER_STATE, map_location="cpu", weights_only=False)


def rng_state() -> dict[str, Any]:
    """torch's global RNG (dropout, e.g. in LoRA). Sampling and data order are counter-based: no state to keep."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def find_resume_checkpoint(resume: str, checkpoints: Path) -> Optional[Path]:
    """trainer.resume: never -> None; auto -> the latest checkpoint under `checkpoints` (None: start fresh); a dir."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest(checkpoints)
    path = Path(resume)
    if not (path / TRAINER_STATE).is_file():
        raise DynamoError(f"trainer.resume={resume!r} holds no {TRAINER_STATE}: not a train checkpoint")
    return path
