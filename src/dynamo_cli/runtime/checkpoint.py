"""Atomic, verified checkpoints and exact resume.

A checkpoint dir holds the model and tokenizer in Hugging Face format plus `trainer_state.pt` (optimiser,
scheduler, allocator state, step and RNG states), and, written last, `manifest.json`: every other file's size
and sha256. It is written to a temporary dir, fsynced, read back against its manifest, then renamed into place,
so a crash never leaves a half-written `step-N` or replaces a good `final`, and a checkpoint that appears has
verified. Resume verifies again (a disk can rot, a copy can be cut short) and falls back to the newest
checkpoint that still verifies, with a warning.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import importlib
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
    A dir without a manifest (written before manifests existed) passes unverified; a manifest that cannot be read or
    is not {"files": {<relative path>: {"size": int, "sha256": str}, ...}} listing trainer_state.pt (when the dir has
    one) marks the checkpoint damaged."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        listed = json.loads(manifest_path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return f"{MANIFEST} is unreadable"
    problem = _malformed(listed, directory)
    if problem:
        return f"{MANIFEST} is malformed: {problem}"
    for name, want in listed.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["size"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {want['size']}"
        if hashes and _sha256(path) != want["sha256"]:
            return f"{name} does not match its sha256"
    return None


def _malformed(listed: Any, directory: Path) -> Optional[str]:
    if not isinstance(listed, dict) or not listed:
        return "'files' is not a non-empty object"
    for name, want in listed.items():
        inside = not Path(name).is_absolute() and ".." not in Path(name).parts
        if not inside:
            return f"{name!r} is not a path inside the checkpoint"
        if (not isinstance(want, dict) or not isinstance(want.get("size"), int) or isinstance(want.get("size"), bool)
                or not isinstance(want.get("sha256"), str)):
            return f"the entry of {name!r} is not {{size, sha256}}"
    if (directory / TRAINER_STATE).is_file() and TRAINER_STATE not in listed:
        return f"{TRAINER_STATE} is not listed"
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


def recover(checkpoint_root: Path) -> list[Path]:
    """Complete checkpoints that a crash left under a temporary name, renamed into place (each with a warning).

    atomic.write_dir re-saving `final` moves the old one to `.old-final`, then the new one from `.tmp-final` into place:
    a crash between the two renames leaves no `final` but both whole. The newer (`.tmp-`) wins when it verifies, else
    the older; complete means a manifest that verifies and a trainer_state.pt. A half-written temporary dir has no
    manifest yet (it is written last) and is left alone."""
    root = Path(checkpoint_root)
    recovered = []
    for prefix in (".tmp-", ".old-"):  # the newer write first
        for candidate in sorted(root.glob(f"{prefix}*")) if root.is_dir() else []:
            target = root / candidate.name[len(prefix):]
            complete = (candidate / MANIFEST).is_file() and (candidate / TRAINER_STATE).is_file() and verify(candidate) is None
            if not candidate.is_dir() or target.exists() or not complete:
                continue
            os.replace(candidate, target)
            atomic.fsync_dir(root)
            warn(f"recovered checkpoint {target} from {candidate.name}, which a crash between two renames left complete")
            recovered.append(target)
    return recovered


def logged_steps(paths) -> dict[str, int]:
    """file name -> the last RL step (>= 1) it holds a record of, for the files that hold any. Step 0 is the eval
    before RL: it is written again by a fresh start."""
    found = {}
    for path in map(Path, paths):
        if not path.is_file():
            continue
        last = 0
        with path.open("rb") as f:
            for line in f:
                try:
                    step = json.loads(line).get("step", 0)
                except (ValueError, AttributeError):
                    continue  # a line cut short by a crash
                if isinstance(step, int) and step > last:
                    last = step
        if last:
            found[path.name] = last
    return found


_OWN_TYPES = {"builtins.slice": slice}  # a prefetched batch's rows (stages/schedule.py) hold slices


def _allowed_type(name: str):
    """The class a trainer_state.pt may name: one of dynamo's own dataclasses (a prefetched batch: Collected, Rollouts,
    Problem, ...) or slice; None for anything else."""
    if name in _OWN_TYPES:
        return _OWN_TYPES[name]
    module_name, _, qualname = name.rpartition(".")
    if not module_name.startswith("dynamo_cli."):
        return None
    try:
        value = getattr(importlib.import_module(module_name), qualname)
    except (ImportError, AttributeError):
        return None
    return value if isinstance(value, type) and dataclasses.is_dataclass(value) else None


def load_trainer_state(directory: Path) -> dict[str, Any]:
    """trainer_state.pt, unpickled with weights_only=True: tensors and plain values, plus dynamo's own dataclasses where
    a one-step-off-policy checkpoint holds its prefetched batch. A file that names any other type is refused in one line
    (a checkpoint from elsewhere must not run code when it is loaded)."""
    from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

    path = Path(directory) / TRAINER_STATE
    names = get_unsafe_globals_in_checkpoint(path)
    refused = [name for name in names if _allowed_type(name) is None]
    if refused:
        raise DynamoError(f"checkpoint {directory}: {TRAINER_STATE} holds objects of types that dynamo never writes "
                          f"({', '.join(refused[:3])}): refusing to load it")
    with safe_globals([_allowed_type(name) for name in names]):
        return torch.load(path, map_location="cpu", weights_only=True)


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


def find_resume_checkpoint(resume: str, checkpoints: Path, *, history=()) -> Optional[Path]:
    """trainer.resume: never -> None; auto -> the latest checkpoint under `checkpoints` (None: start fresh; call
    `recover` first, from one process); a dir.

    `history`: the run's logs (metrics.jsonl, rollouts.jsonl). A fresh start empties them, so auto never starts fresh
    while one holds RL steps: with no checkpoint that verifies (none was written, all are damaged) it stops in one line
    instead, and the logs stay as they are."""
    if resume == "never":
        return None
    if resume == "auto":
        found = latest(checkpoints)
        logged = logged_steps(history) if found is None else {}
        if logged:
            held = ", ".join(f"{name} up to step {step}" for name, step in logged.items())
            raise DynamoError(f"trainer.resume=auto: no checkpoint under {checkpoints} verifies, and starting over would delete "
                              f"the history in {Path(next(iter(history))).parent} ({held}); move those files away to start "
                              "over, or resume from a checkpoint dir with trainer.resume=<dir>")
        return found
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
