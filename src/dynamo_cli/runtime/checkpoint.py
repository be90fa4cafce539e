"""Atomic, verified checkpoints and exact resume.

A checkpoint dir holds the model and tokenizer in Hugging Face format plus `trainer_state.pt` (optimiser,
scheduler, allocator state, step and RNG states), and, written last, `manifest.json`: every other file's size
and sha256. It is written to a temporary dir, fsynced, read back against its manifest, then renamed into place,
so a crash never leaves a half-written `step-N` or replaces a good `final`, and a checkpoint that appears has
verified. Resume verifies again (a disk can rot, a copy can be cut short) and falls back to the newest
checkpoint that still verifies, with a warning.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from dynamo_cli.errors import DynamoError, warn
from dynamo_cli.models.load import save_checkpoint_files
from dynamo_cli.models.trainable import load_trainables_state, trainables_state
from dynamo_cli.runtime import atomic, faultpoints

TRAINER_STATE = "trainer_state.pt"
MANIFEST = "manifest.json"


def save_checkpoint(directory: Path, *, model, tokenizer, trainer_state: Optional[dict[str, Any]] = None,
                    extra_models: Optional[dict[str, Any]] = None, staged: Optional[dict[str, Path]] = None) -> Path:
    """The policy in HF format at the top of `directory`; each extra module (a critic) in `directory/<name>/`;
    each `staged` dir (written beforehand by every rank: FSDP2's optimiser shards) moved in as `directory/<name>/`.
    A full disk (ENOSPC) leaves every existing checkpoint as it was and stops with one line."""
    def write(tmp: Path) -> None:
        for name, path in (staged or {}).items():
            os.replace(path, tmp / name)
        save_checkpoint_files(model, tokenizer, tmp)
        for name, module in (extra_models or {}).items():
            save_checkpoint_files(module, tokenizer, tmp / name)
        faultpoints.reach("checkpoint_write")  # the kill-anywhere harness: a checkpoint half written
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)
        write_manifest(tmp)

    directory = Path(directory)
    try:
        return atomic.write_dir(directory, write, check=check_manifest)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        previous = latest(directory.parent, quiet=True)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint was touched"
        raise DynamoError(f"no space left on the device writing checkpoint {directory}: {kept}; free space, then "
                          "continue with trainer.resume=auto") from error


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_of(directory: Path) -> dict[str, dict[str, Any]]:
    """relative path -> {size, sha256} of every file under `directory` but the manifest itself."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}


def write_manifest(directory: Path) -> None:
    (Path(directory) / MANIFEST).write_text(json.dumps({"files": manifest_of(directory)}, indent=1))


def verify(directory: Path, *, hashes: bool = True) -> Optional[str]:
    """What is wrong with a checkpoint dir (None: it matches its manifest). `hashes=False` checks sizes only.
    A dir without a manifest (written before manifests existed) passes unverified."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        listed = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for name, want in listed.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["size"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {want['size']}"
        if hashes and _sha256(path) != want["sha256"]:
            return f"{name} does not match its sha256"
    return None


def check_manifest(directory: Path) -> None:
    """Raise if a just-written checkpoint does not read back as its manifest says (before it replaces anything)."""
    problem = verify(directory)
    if problem:
        raise OSError(errno.EIO, f"checkpoint {directory} did not verify after writing: {problem}")


def step_dirs(checkpoint_root: Path) -> list[Path]:
    """Complete `step-N` checkpoints, oldest first."""
    found = [p for p in Path(checkpoint_root).glob("step-*") if p.is_dir() and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def prune(checkpoint_root: Path, keep_last: int) -> None:
    """Remove all but the last `keep_last` step checkpoints, never the newest good one: an old dir goes only while
    a newer kept one still matches its manifest (sizes: every kept dir was hash-verified before it appeared)."""
    dirs = step_dirs(checkpoint_root)
    kept, old = dirs[-keep_last:], dirs[:-keep_last]
    if not any(verify(d, hashes=False) is None for d in kept):
        good = [d for d in old if verify(d, hashes=False) is None]
        old = [d for d in old if d not in good[-1:]]
    for d in old:
        shutil.rmtree(d, ignore_errors=True)


def latest(checkpoint_root: Path, *, quiet: bool = False) -> Optional[Path]:
    """The newest resumable checkpoint that verifies: `final` of a finished run (nothing left to train), else the
    last step-N. A checkpoint that fails its manifest is passed over with a warning (unless `quiet`)."""
    final = Path(checkpoint_root) / "final"
    candidates = ([final] if (final / TRAINER_STATE).is_file() else []) + step_dirs(checkpoint_root)[::-1]
    for candidate in candidates:
        problem = verify(candidate)
        if problem is None:
            return candidate
        if not quiet:
            warn(f"checkpoint {candidate} is damaged ({problem}): falling back to the one before it")
    return None


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
    problem = verify(path)
    if problem:
        raise DynamoError(f"trainer.resume={resume!r} is damaged: {problem}")
    return path


def save_training(directory: Path, *, dp, policy, tokenizer, trainables: list, allocator, sampler, guard, schedule,
                  totals: dict[str, Any]) -> Path:
    """Everything an exact resume needs: weights, optimisers, schedulers, allocator and sampler state, RNG, totals.
    Rank 0 writes (the replicas are identical, see dist/replica_param_diff); the others wait for its verdict. Under
    FSDP2 every rank first helps gather the full weights and writes its optimiser shard (runtime/fsdp.py)."""
    full_model, staged = dp.checkpoint_model(policy), dp.stage_optimizer_shards(trainables, directory)
    schedule_state = schedule.state_dict()
    failed = None
    if dp.is_main:
        try:
            save_checkpoint(directory, model=full_model, tokenizer=tokenizer, staged=staged, trainer_state={
                **trainables_state(trainables), "allocator": allocator.state_dict(), "sampler": sampler.state_dict(),
                "rng": rng_state(), "totals": totals, "guard": guard.state_dict(), "schedule": schedule_state},
                extra_models={t.name: dp.unwrap(t.model) for t in trainables[1:]})
        except DynamoError as error:  # a full disk: every process stops, not only rank 0
            failed = str(error)
    if failed := dp.broadcast_object(failed):
        raise DynamoError(failed)
    return directory


def restore_training(directory: Path, *, dp, trainables: list, allocator, sampler, guard, schedule) -> dict[str, Any]:
    """Load what `save_training` wrote into the parts; the run's totals (step, rollouts, tokens, seconds)."""
    state = load_trainer_state(directory)
    load_trainables_state(trainables, state)
    dp.load_optimizer_shards(trainables, directory)  # FSDP2: every rank reads its shard; nothing otherwise
    allocator.load_state_dict(state["allocator"])
    sampler.load_state_dict(state.get("sampler", {}))  # checkpoints from before the sampler group hold none
    restore_rng(state["rng"])
    guard.load_state_dict(state.get("guard", {"skipped": 0, "in_a_row": 0}))  # none before the guard
    schedule.load_state_dict(state.get("schedule", {}))  # one-step-off-policy: the next step's batch, collected ahead
    return state["totals"]
