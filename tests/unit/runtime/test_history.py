"""No history lost (docs/robustness.md "What survives what"): resume=auto never empties logs that hold steps, a checkpoint
left complete under a temporary name is recovered, every file is written by temp + fsync + rename, a full disk is caught
whatever the library raised, a malformed manifest marks a checkpoint damaged, trainer_state.pt loads with
weights_only=True, and sft and eval take the run lock. Faults are injected in-process."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import compose_schema
from safetensors import SafetensorError

from bench import faults as harness
from dynamo_cli.errors import DynamoError
from dynamo_cli.models.load import build_char_tokenizer, build_tiny_model
from dynamo_cli.runtime import atomic, checkpoint
from dynamo_cli.tasks.base import Problem

TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/0: file write failed")
SAFETENSORS_FULL = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')


def fake_checkpoint(directory: Path, step: int, *, payload: bytes = b"weights") -> Path:
    def write(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(payload * 64)
        torch.save({"totals": {"step": step}}, tmp / checkpoint.TRAINER_STATE)
        checkpoint.write_manifest(tmp)

    return atomic.write_dir(directory, write, check=checkpoint.check_manifest)


def log_steps(path: Path, steps) -> str:
    text = "".join(json.dumps({"step": s, "train/loss": 0.1}) + "\n" for s in steps)
    path.write_text(text)
    return text


# ------------------------------------------------------------------------------------------- resume=auto
def test_resume_auto_never_empties_logs_that_hold_steps_when_no_checkpoint_verifies(tmp_path, capsys):
    from dynamo_cli.recipes import train as train_recipe

    metrics = log_steps(tmp_path / "metrics.jsonl", [0, 1, 2, 3])
    rollouts = log_steps(tmp_path / "rollouts.jsonl", [1, 2, 3])
    cfg = compose_schema("train", [*harness.OVERRIDES, "trainer.resume=auto", "trainer.steps=2"])
    with pytest.raises(DynamoError) as caught:  # no checkpoint was ever written (save_every larger than the steps run)
        train_recipe.run(cfg, tmp_path)
    assert str(caught.value) == (f"trainer.resume=auto: no checkpoint under {tmp_path / 'checkpoints'} verifies, and starting over "
                                 f"would delete the history in {tmp_path} (metrics.jsonl up to step 3, rollouts.jsonl up to step 3); "
                                 "move those files away to start over, or resume from a checkpoint dir with trainer.resume=<dir>")
    fake_checkpoint(tmp_path / "checkpoints" / "step-2", 2)
    (tmp_path / "checkpoints" / "step-2" / "model.safetensors").write_bytes(b"rot")  # every checkpoint damaged
    with pytest.raises(DynamoError, match="no checkpoint under .* verifies, and starting over would delete the history"):
        train_recipe.run(cfg, tmp_path)
    assert "checkpoint" in capsys.readouterr().err  # the damaged one was named, with a warning
    assert (tmp_path / "metrics.jsonl").read_text() == metrics and (tmp_path / "rollouts.jsonl").read_text() == rollouts


def test_resume_auto_starts_over_when_the_logs_hold_only_the_eval_before_step_1(tmp_path):
    log_steps(tmp_path / "metrics.jsonl", [0])
    assert checkpoint.logged_steps([tmp_path / "metrics.jsonl", tmp_path / "rollouts.jsonl"]) == {}
    assert checkpoint.find_resume_checkpoint("auto", tmp_path / "checkpoints", history=[tmp_path / "metrics.jsonl"]) is None
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n{"step": 4, "train/lo')  # a line cut short by a crash
    assert checkpoint.logged_steps([tmp_path / "metrics.jsonl"]) == {}


def test_a_crash_between_the_two_renames_of_a_final_resave_is_recovered(tmp_path, monkeypatch, capsys):
    root = tmp_path / "checkpoints"
    fake_checkpoint(root / "final", 6, payload=b"old")
    real_replace, calls = os.replace, []

    def crash_after_the_first_rename(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == 2:  # final -> .old-final happened; .tmp-final -> final is where the process dies
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", crash_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        fake_checkpoint(root / "final", 9, payload=b"new")
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert sorted(p.name for p in root.iterdir()) == [".old-final", ".tmp-final"]  # both whole, neither seen
    assert checkpoint.latest(root) is None
    assert checkpoint.recover(root) == [root / "final"]
    assert checkpoint.load_trainer_state(root / "final")["totals"]["step"] == 9  # the newer write wins
    assert f"recovered checkpoint {root / 'final'} from .tmp-final" in capsys.readouterr().err
    assert checkpoint.find_resume_checkpoint("auto", root) == root / "final"


def test_recovery_falls_back_to_the_old_copy_and_leaves_half_written_dirs_alone(tmp_path):
    root = tmp_path / "checkpoints"
    fake_checkpoint(root / ".old-final", 6)
    (root / ".tmp-final").mkdir()
    (root / ".tmp-final" / "model.safetensors").write_bytes(b"half")  # no manifest yet: it is written last
    fake_checkpoint(root / ".tmp-step-8", 8)
    (root / ".tmp-step-8" / checkpoint.TRAINER_STATE).write_bytes(b"cut")  # complete-looking but does not verify
    assert checkpoint.recover(root) == [root / "final"]
    assert checkpoint.load_trainer_state(root / "final")["totals"]["step"] == 6
    assert sorted(p.name for p in root.iterdir()) == [".tmp-final", ".tmp-step-8", "final"]


# ------------------------------------------------------------------------------------------- manifests
@pytest.mark.parametrize("manifest, problem", [
    ("not json", "manifest.json is unreadable"),
    ('["files"]', "manifest.json is unreadable"),
    ('{"files": ["model.safetensors"]}', "manifest.json is malformed: 'files' is not a non-empty object"),
    ('{"files": {}}', "manifest.json is malformed: 'files' is not a non-empty object"),
    ('{"files": {"model.safetensors": {"size": "448"}}}', "manifest.json is malformed: the entry of 'model.safetensors' is not {size, sha256}"),
    ('{"files": {"../../etc/passwd": {"size": 1, "sha256": "x"}}}', "manifest.json is malformed: '../../etc/passwd' is not a path inside"),
    ('{"files": {"model.safetensors": {"size": 448, "sha256": "x"}}}', "manifest.json is malformed: trainer_state.pt is not listed"),
])
def test_a_malformed_manifest_marks_the_checkpoint_damaged(tmp_path, manifest, problem):
    good = fake_checkpoint(tmp_path / "step-1", 1)
    (good / checkpoint.MANIFEST).write_text(manifest)
    assert checkpoint.verify(good).startswith(problem)
    assert checkpoint.latest(tmp_path, quiet=True) is None


# ------------------------------------------------------------------------------------------- a full disk
@pytest.mark.parametrize("raised, free", [(TORCH_FULL, 0), (SAFETENSORS_FULL, 10 << 30),
                                          (RuntimeError("writer failed"), 0)])
def test_a_full_disk_is_caught_whatever_the_library_raises(tmp_path, monkeypatch, raised, free):
    """torch.save reports a full disk as a RuntimeError that names no errno (the free space says it), safetensors as
    its own error type that does: either leaves the previous checkpoint as it was and stops in one line."""
    model = build_tiny_model(harness_model(), build_char_tokenizer())
    tokenizer = build_char_tokenizer()
    checkpoint.save_checkpoint(tmp_path / "step-1", model=model, tokenizer=tokenizer, trainer_state={"step": 1})
    monkeypatch.setattr(atomic, "free_bytes", lambda where: free)

    def fail(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise raised

    monkeypatch.setattr(checkpoint.torch, "save", fail)
    with pytest.raises(DynamoError, match=f"^no space left on the device writing checkpoint {tmp_path / 'step-2'}: the previous "
                                          f"checkpoint {tmp_path / 'step-1'} is intact"):
        checkpoint.save_checkpoint(tmp_path / "step-2", model=model, tokenizer=tokenizer, trainer_state={"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1"] and checkpoint.verify(tmp_path / "step-1") is None


def test_an_error_that_is_not_a_full_disk_is_raised_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "free_bytes", lambda where: 10 << 30)
    error = RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert not atomic.disk_full(error, tmp_path)
    wrapped = ValueError("could not save")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert atomic.disk_full(wrapped) and atomic.disk_full(SAFETENSORS_FULL)
    with pytest.raises(RuntimeError, match="file write failed"):
        atomic.write_file(tmp_path / "x.json", lambda tmp: (_ for _ in ()).throw(error))
    assert list(tmp_path.iterdir()) == []


def harness_model():
    from dynamo_cli.config.model import TinyModelConfig

    return TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)


# ------------------------------------------------------------------------------------------- atomic files
def test_write_text_fsyncs_the_file_and_the_dir_and_never_leaves_half_a_file(tmp_path, monkeypatch):
    target = tmp_path / "eval.json"
    atomic.write_text(target, "old")
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    atomic.write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert synced[0].parent == tmp_path and synced[0].name.startswith(".eval.tmp-") and synced[-1] == tmp_path

    def half(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic.write_file(target, half)
    assert target.read_text(encoding="utf-8") == "new ✓" and [p.name for p in tmp_path.iterdir()] == ["eval.json"]


# ------------------------------------------------------------------------------------------- weights_only
def test_trainer_state_loads_with_weights_only_and_refuses_foreign_types(tmp_path):
    state = {"totals": {"step": 3}, "rng": {"torch": torch.get_rng_state()},
             "schedule": {"step": 4, "collected": [Problem("math/L1/3+5", "3+5", "8", "L1"), slice(0, 4)]}}
    torch.save(state, tmp_path / checkpoint.TRAINER_STATE)
    loaded = checkpoint.load_trainer_state(tmp_path)
    assert loaded["schedule"]["collected"] == state["schedule"]["collected"] and loaded["totals"] == {"step": 3}

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"totals": Payload()}, tmp_path / checkpoint.TRAINER_STATE)
    with pytest.raises(DynamoError, match=f"^checkpoint {tmp_path}: trainer_state.pt holds objects of types that dynamo never "
                                          r"writes \((posix|os)\.system\): refusing to load it$"):
        checkpoint.load_trainer_state(tmp_path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- the run lock
@pytest.mark.parametrize("command", ["sft", "eval"])
def test_sft_and_eval_refuse_a_run_dir_that_a_live_command_holds(tmp_path, command):
    from dynamo_cli.recipes import eval as eval_recipe
    from dynamo_cli.recipes import sft as sft_recipe

    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
        "os.write(fd, b'{\"host\": \"elsewhere\", \"pid\": 4242}'); print('held', flush=True); time.sleep(60)"),
        str(tmp_path / "run.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = compose_schema(command, ["logger=none", "device=cpu", "task.num_train=20", "task.num_test_per_level=2"])
        recipe = sft_recipe if command == "sft" else eval_recipe
        start = time.monotonic()
        with pytest.raises(DynamoError, match=f"{tmp_path} is in use by a live run \\(pid 4242 on elsewhere"):
            recipe.run(cfg, tmp_path)
        assert time.monotonic() - start < 30 and not (tmp_path / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
