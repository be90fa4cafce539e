"""Faults a training run survives (docs/robustness.md "What survives what"): non-finite steps, preemption, damaged checkpoints,
a full disk, a second run in the same dir, W&B failing, and SIGKILL anywhere."""
from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import read_jsonl
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from bench import faults as harness
from dynamo_cli.cli import CONF_DIR, register_resolvers, to_schema
from dynamo_cli.config.base import ConfigError
from dynamo_cli.config.logger import LoggerConfig
from dynamo_cli.config.store import register_schemas
from dynamo_cli.errors import DynamoError
from dynamo_cli.models.trainable import Trainable
from dynamo_cli.runtime import checkpoint
from dynamo_cli.runtime.guard import NonFiniteGuard, nonfinite_cause
from dynamo_cli.runtime.preempt import Preemption

register_schemas()
register_resolvers()


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_schema(compose(config_name="train", overrides=overrides))


# ------------------------------------------------------------------------------------ 1. non-finite guard
def test_nonfinite_cause_names_what_was_not_finite():
    assert nonfinite_cause(loss_finite=True, grad_norms={"policy": 3.5, "critic": 0.0}) is None
    assert nonfinite_cause(loss_finite=False, grad_norms={"policy": 1.0}) == "non-finite loss"
    assert nonfinite_cause(loss_finite=True, grad_norms={"policy": float("inf"), "critic": float("nan")}) == \
        "non-finite policy grad norm inf, critic grad norm nan"


def test_guard_counts_skips_and_stops_after_too_many_in_a_row():
    guard = NonFiniteGuard(max_in_a_row=2)
    nan = {"policy": float("nan")}
    assert guard.allow(step=1, update=1, loss_finite=True, grad_norms={"policy": 1.0})
    assert not guard.allow(step=1, update=2, loss_finite=True, grad_norms=nan)  # skipped: 1 in a row
    assert guard.allow(step=2, update=1, loss_finite=True, grad_norms={"policy": 1.0})  # a finite step resets the streak
    assert not guard.allow(step=3, update=1, loss_finite=False, grad_norms={"policy": 1.0})
    assert not guard.allow(step=3, update=2, loss_finite=True, grad_norms=nan)  # 2 in a row: still allowed
    assert (guard.skipped, guard.in_a_row) == (3, 2)
    assert guard.take_causes() == ["update 2: non-finite policy grad norm nan", "update 1: non-finite loss",
                                   "update 2: non-finite policy grad norm nan"] and guard.take_causes() == []
    with pytest.raises(DynamoError, match=r"^step 4 \(update 1\): 3 optimiser steps in a row had a non-finite loss, more than "
                                          r"trainer.max_skipped_steps=2"):
        guard.allow(step=4, update=1, loss_finite=False, grad_norms={"policy": 1.0})
    restored = NonFiniteGuard(max_in_a_row=2)
    restored.load_state_dict(guard.state_dict())
    assert (restored.skipped, restored.in_a_row) == (guard.skipped, guard.in_a_row)


def test_a_discarded_step_leaves_weights_adam_state_and_schedule_untouched():
    from dynamo_cli.runtime.distributed import DataParallel

    class OneProcess(DataParallel):
        def __init__(self):
            self.world_size, self.rank, self.fsdp_version = 1, 0, None

        @property
        def deepspeed(self) -> bool:
            return False

    dp = OneProcess()
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    t = Trainable("policy", model, optimizer, scheduler, grad_clip=1.0)
    model(torch.ones(1, 3)).sum().backward()
    assert t.step(dp) > 0  # one real step: Adam has moments to lose
    before = ({k: v.clone() for k, v in model.state_dict().items()},
              {i: {k: v.clone() for k, v in s.items()} for i, s in optimizer.state_dict()["state"].items()}, scheduler.get_last_lr())
    (model(torch.ones(1, 3)).sum() * float("nan")).backward()  # a NaN gradient
    norm = t.clip(dp)
    assert norm != norm  # NaN
    t.discard()
    assert all(torch.equal(v, before[0][k]) for k, v in model.state_dict().items())
    state = optimizer.state_dict()["state"]
    assert all(torch.equal(state[i][k], v) for i, s in before[1].items() for k, v in s.items())
    assert scheduler.get_last_lr() == before[2] and all(p.grad is None for p in model.parameters())


GUARD_RUN = [*harness.OVERRIDES, "trainer.steps=3", "trainer.eval_every=0", "seed=1", "algorithm.entropy_coef=0.01"]


def _poison_logits(monkeypatch):
    """NaN logits: the policy's output during step 2's update (generation and old log-probs stay finite)."""
    from dynamo_cli.stages import update as update_module

    real_call, real_stats = update_module.PolicyUpdate.__call__, update_module.completion_forward
    poisoned = {"on": False}

    def call(self, batch, *, generator, step):
        poisoned["on"] = step == 2
        try:
            return real_call(self, batch, generator=generator, step=step)
        finally:
            poisoned["on"] = False

    def stats(model, **kwargs):
        if not poisoned["on"]:
            return real_stats(model, **kwargs)

        def nan_logits(module, args, output):
            output.logits = output.logits * float("nan")
            return output

        handle = model.register_forward_hook(nan_logits)
        try:
            return real_stats(model, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(update_module.PolicyUpdate, "__call__", call)
    monkeypatch.setattr(update_module, "completion_forward", stats)


def _poison_rewards(monkeypatch):
    """NaN rewards for every completion of step 2 (a verifier gone wrong)."""
    from dynamo_cli.rollout import episodes
    from dynamo_cli.stages import collect

    real = collect.Collector.__call__

    def call(self, step):
        if step != 2:
            return real(self, step)
        real_score = episodes.score  # what the single-turn episode runner scores with
        episodes.score = lambda *a, **k: (lambda r: (r[0] * float("nan"), *r[1:]))(real_score(*a, **k))
        try:
            return real(self, step)
        finally:
            episodes.score = real_score

    monkeypatch.setattr(collect.Collector, "__call__", call)


def _poison_gradients(monkeypatch):
    """After each backward of step 2, one parameter's gradient is NaN."""
    from dynamo_cli.runtime.distributed import DataParallel
    from dynamo_cli.stages import update as update_module

    real_call, real_backward = update_module.PolicyUpdate.__call__, DataParallel.backward
    poisoned = {"model": None}

    def call(self, batch, *, generator, step):
        poisoned["model"] = self.policy.model if step == 2 else None
        return real_call(self, batch, generator=generator, step=step)

    def backward(self, loss):
        real_backward(self, loss)
        if poisoned["model"] is not None:
            next(p for p in poisoned["model"].parameters() if p.grad is not None).grad[0] = float("nan")

    monkeypatch.setattr(update_module.PolicyUpdate, "__call__", call)
    monkeypatch.setattr(DataParallel, "backward", backward)


@pytest.mark.parametrize("poison", [_poison_logits, _poison_rewards, _poison_gradients], ids=["logits", "rewards", "gradients"])
def test_a_nonfinite_step_is_skipped_and_leaves_weights_and_adam_untouched(poison, monkeypatch, tmp_path, capsys):
    """Step 2 of 3 is poisoned: both of its optimiser steps are skipped, so the step-2 checkpoint holds exactly the
    step-1 weights and Adam state, and step 3 trains on from them."""
    from dynamo_cli.recipes import train as train_recipe

    poison(monkeypatch)
    train_recipe.run(compose_train(GUARD_RUN), tmp_path)
    steps = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert [r["train/skipped_steps"] for r in steps] == [0, 2, 2]
    assert "step 2: skipped 2 optimiser step(s): update 1: non-finite" in capsys.readouterr().out
    one, two = (tmp_path / "checkpoints" / f"step-{s}" for s in (1, 2))
    assert (one / "model.safetensors").read_bytes() == (two / "model.safetensors").read_bytes()
    adam = [checkpoint.load_trainer_state(d) for d in (one, two)]
    assert adam[0]["scheduler"] == adam[1]["scheduler"]
    for i, s in adam[0]["optimizer"]["state"].items():
        assert all(torch.equal(v, adam[1]["optimizer"]["state"][i][k]) for k, v in s.items())
    final = load_file(tmp_path / "checkpoints" / "final" / "model.safetensors")
    start = load_file(two / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in final.values()) and any(not torch.equal(final[k], start[k]) for k in final)


def test_too_many_nonfinite_steps_in_a_row_stop_the_run_naming_the_step(monkeypatch, tmp_path):
    from dynamo_cli.recipes import train as train_recipe

    _poison_rewards(monkeypatch)
    with pytest.raises(DynamoError, match=r"^step 2 \(update 2\): 2 optimiser steps in a row had a non-finite loss.*"
                                          r"trainer.max_skipped_steps=1"):
        train_recipe.run(compose_train([*GUARD_RUN, "trainer.max_skipped_steps=1"]), tmp_path)


def test_guard_and_preemption_settings_are_validated_in_one_line():
    with pytest.raises(ConfigError, match="trainer.preempt_signals: 'SIGKILL' is not allowed; choose from: SIGTERM, SIGUSR1"):
        compose_train(["trainer.preempt_signals=[SIGKILL]"])
    with pytest.raises(ConfigError, match="trainer.max_skipped_steps=-1 must be >= 0"):
        compose_train(["trainer.max_skipped_steps=-1"])


# ---------------------------------------------------------------------------------- 3. checkpoint integrity
def _fake_checkpoint(directory: Path, step: int) -> Path:
    def write(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(bytes(range(256)) * 4)
        torch.save({"totals": {"step": step}}, tmp / checkpoint.TRAINER_STATE)
        checkpoint.write_manifest(tmp)

    from dynamo_cli.runtime import atomic

    return atomic.write_dir(directory, write, check=checkpoint.check_manifest)


def test_manifest_lists_sizes_and_hashes_and_verify_catches_damage(tmp_path):
    good = _fake_checkpoint(tmp_path / "step-1", 1)
    manifest = json.loads((good / checkpoint.MANIFEST).read_text())["files"]
    assert set(manifest) == {"model.safetensors", checkpoint.TRAINER_STATE} and manifest["model.safetensors"]["size"] == 1024
    assert checkpoint.verify(good) is None
    data = bytearray((good / "model.safetensors").read_bytes())
    data[100] ^= 1  # one flipped bit
    (good / "model.safetensors").write_bytes(bytes(data))
    assert checkpoint.verify(good) == "model.safetensors does not match its sha256"
    assert checkpoint.verify(good, hashes=False) is None  # same size
    (good / "model.safetensors").write_bytes(bytes(data[:10]))
    assert checkpoint.verify(good, hashes=False) == "model.safetensors has 10 bytes, the manifest says 1024"
    (good / "model.safetensors").unlink()
    assert checkpoint.verify(good) == "model.safetensors is missing"


def test_resume_falls_back_to_the_previous_good_checkpoint_with_a_warning(tmp_path, capsys):
    for step in (1, 2, 3):
        _fake_checkpoint(tmp_path / f"step-{step}", step)
    (tmp_path / "step-3" / checkpoint.TRAINER_STATE).write_bytes(b"cut short")
    assert checkpoint.latest(tmp_path) == tmp_path / "step-2"
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith(f"dynamo: warning: checkpoint {tmp_path / 'step-3'} is damaged (")
    with pytest.raises(DynamoError, match="is damaged: trainer_state.pt has 9 bytes"):
        checkpoint.find_resume_checkpoint(str(tmp_path / "step-3"), tmp_path)
    # prune keeps the newest good checkpoint while the newer kept ones are damaged
    (tmp_path / "step-2" / "model.safetensors").write_bytes(b"")
    checkpoint.prune(tmp_path, keep_last=2)
    assert [d.name for d in checkpoint.step_dirs(tmp_path)] == ["step-1", "step-2", "step-3"]
    _fake_checkpoint(tmp_path / "step-4", 4)
    checkpoint.prune(tmp_path, keep_last=2)  # step-4 verifies: the older ones may go
    assert [d.name for d in checkpoint.step_dirs(tmp_path)] == ["step-3", "step-4"]


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_stops_in_one_line(monkeypatch, tmp_path):
    from dynamo_cli.recipes import train as train_recipe

    real_save, saves = torch.save, []

    def save(obj, path, *args, **kwargs):
        if Path(path).name == checkpoint.TRAINER_STATE:
            saves.append(path)
            if len(saves) == 2:  # the second checkpoint (step-2): the disk fills up half-way through
                Path(path).write_bytes(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(DynamoError) as caught:
        train_recipe.run(compose_train([*harness.OVERRIDES, "trainer.steps=3", "trainer.eval_every=0"]), tmp_path)
    assert str(caught.value) == (f"no space left on the device writing checkpoint {checkpoints / 'step-2'}: the previous checkpoint "
                                 f"{checkpoints / 'step-1'} is intact; free space, then continue with trainer.resume=auto")
    assert [d.name for d in checkpoints.iterdir()] == ["step-1"]  # no temporary dir left behind
    assert checkpoint.verify(checkpoints / "step-1") is None and checkpoint.latest(checkpoints) == checkpoints / "step-1"


# -------------------------------------------------------------------------------------- 2. preemption
def test_preemption_flag_is_raised_by_the_configured_signals_only():
    before = signal.getsignal(signal.SIGUSR1)
    flag = Preemption(["SIGUSR1"])
    try:
        assert flag.received is None and signal.getsignal(signal.SIGTERM) != flag._handle
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert flag.received == "SIGUSR1"
    finally:
        flag.restore()
    assert signal.getsignal(signal.SIGUSR1) == before  # given back


# ------------------------------------------------------------------------------------------- 5. kill anywhere
def test_plan_kills_visits_every_point_and_is_seeded():
    plan = harness.plan_kills(8, seed=3, steps=6, seconds=20.0)
    assert [p for p, _ in plan] == list(harness.POINTS) * 2
    assert plan == harness.plan_kills(8, seed=3, steps=6, seconds=20.0) != harness.plan_kills(8, seed=4, steps=6, seconds=20.0)
    assert all(1 <= k <= 3 for p, k in plan if p != "random") and all(0 <= s <= 20 for p, s in plan if p == "random")


# --------------------------------------------------------------------------------------------- 7. W&B faults
class _FakeRun:
    def __init__(self, fail_at: int | None = None):
        self.logged, self.fail_at, self.summary = [], fail_at, {}

    def log(self, values, step):
        if step == self.fail_at:
            raise ConnectionError("wandb: network is unreachable\nretrying ...")
        self.logged.append(step)

    def finish(self):
        pass


def test_wandb_online_that_cannot_start_falls_back_to_offline_with_one_warning(monkeypatch, tmp_path, capsys):
    import wandb

    from dynamo_cli.tracking.tracker import Tracker

    modes = []

    def init(mode, **kwargs):
        modes.append(mode)
        if mode == "online":
            raise wandb.errors.CommError("failed to reach api.wandb.ai")
        return _FakeRun()

    monkeypatch.setattr(wandb, "init", init)
    tracker = Tracker(run_dir=tmp_path, cfg=LoggerConfig(mode="online"), config={}, job_type="train")
    tracker.log({"train/loss": 1.0}, step=1)
    assert modes == ["online", "offline"] and tracker.run.logged == [1]
    assert capsys.readouterr().err.strip().splitlines() == [
        f"dynamo: warning: W&B logger.mode=online failed to start (CommError: failed to reach api.wandb.ai): logging offline "
        f"to {tmp_path / 'wandb'} (`wandb sync` uploads it later)"]

    monkeypatch.setattr(wandb, "init", lambda mode, **kwargs: (_ for _ in ()).throw(RuntimeError("broken")))
    assert Tracker(run_dir=tmp_path / "none", cfg=LoggerConfig(mode="online"), config={}, job_type="train").run is None
    assert "W&B is off (metrics.jsonl only)" in capsys.readouterr().err


def test_a_wandb_error_mid_run_switches_it_off_with_one_warning_and_metrics_jsonl_keeps_every_step(monkeypatch, tmp_path, capsys):
    import wandb

    from dynamo_cli.tracking.tracker import Tracker

    monkeypatch.setattr(wandb, "init", lambda **kwargs: _FakeRun(fail_at=3))
    tracker = Tracker(run_dir=tmp_path, cfg=LoggerConfig(mode="offline"), config={}, job_type="train")
    for step in range(1, 6):
        tracker.log({"train/loss": float(step)}, step=step)
    tracker.summary({"eval/greedy_pass1": 0.5})
    tracker.close()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dynamo: warning: W&B failed mid-run (ConnectionError: wandb: network is unreachable): W&B is off for the "
                   f"rest of this run; metrics.jsonl keeps every step ({tmp_path / 'metrics.jsonl'})"]


