"""The real runs of tests/unit/.../test_faults.py: faults a training run survives (README "What survives what"): non-finite steps, preemption, damaged checkpoints,
a full disk, a second run in the same dir, W&B failing, and SIGKILL anywhere."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ENV, REPO
from helpers import free_port, read_jsonl

from bench import faults as harness
from dynamo_cli.errors import DynamoError
from dynamo_cli.runtime import checkpoint
from dynamo_cli.runtime.runlock import LOCK_FILE, RunLock

STEPS = 4


@pytest.fixture(scope='module')
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run the preempted and the killed runs must reproduce."""
    run_dir = tmp_path_factory.mktemp("straight")
    harness.finish(harness.train(run_dir, steps=STEPS, seed=0), "the uninterrupted run")
    return run_dir


# ------------------------------------------------------------------------------------------ 4. run lock
def test_a_second_live_run_is_refused_and_a_stale_lock_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from dynamo_cli.runtime.runlock import RunLock; "
                               f"RunLock.acquire({str(tmp_path)!r}); print('locked', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DynamoError) as refused:
            RunLock.acquire(tmp_path)
        assert str(refused.value) == (f"{tmp_path} is in use by a live run (pid {holder.pid} on {socket.gethostname()}, see "
                                      f"{tmp_path / LOCK_FILE}): wait for it to end, or choose another hydra.run.dir")
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock.acquire(tmp_path)  # the holder died (SIGKILL): its lock is stale and taken over
    assert lock.previous["pid"] == holder.pid
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_train_refuses_a_run_dir_a_live_run_holds(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from dynamo_cli.runtime.runlock import RunLock; "
                               f"RunLock.acquire({str(tmp_path)!r}); print('locked', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = subprocess.run([sys.executable, "-m", "dynamo_cli", "train", f"hydra.run.dir={tmp_path}", *harness.OVERRIDES],
                                cwd=REPO, env=ENV, text=True, capture_output=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"dynamo train: error: {tmp_path} is in use by a live run (pid {holder.pid} on "
                                                  f"{socket.gethostname()}, see {tmp_path / LOCK_FILE}): wait for it to end, "
                                                  "or choose another hydra.run.dir"]
    assert not (tmp_path / "metrics.jsonl").exists()


def test_preempted_run_checkpoints_exits_143_and_resumes_exactly(straight, tmp_path, sig="SIGTERM"):
    """SIGTERM after step 1 (SIGUSR1 reaches the same flag: test_preemption_flag_is_raised_by_the_configured_signals_only)."""
    process = harness.train(tmp_path, steps=STEPS, seed=0)
    deadline = time.time() + 300
    while not any("train/loss" in r for r in (read_jsonl(tmp_path / "metrics.jsonl") if (tmp_path / "metrics.jsonl").exists() else [])):
        assert process.poll() is None and time.time() < deadline, "run ended before its first step"
        time.sleep(0.05)
    os.kill(process.pid, getattr(signal, sig))
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"dynamo train: preempted: {sig} (on some process): checkpoint {tmp_path / 'checkpoints'}/step-")
    step = checkpoint.load_trainer_state(checkpoint.latest(tmp_path / "checkpoints"))["totals"]["step"]
    assert 1 <= step < STEPS and not (tmp_path / "checkpoints" / "final").exists()
    harness.finish(harness.train(tmp_path, steps=STEPS, seed=0, extra=["trainer.resume=auto"]), "the resumed run")
    assert harness.compare(tmp_path, straight, steps=STEPS) == []


def test_sigkill_at_three_moments_then_resume_matches_the_uninterrupted_run(straight, tmp_path):
    """A checkpoint half written, an eval computed but not logged, a step logged but not checkpointed."""
    report = harness.kill_anywhere(kills=3, seed=0, steps=STEPS, work_dir=tmp_path, straight=straight)
    assert [k[0] for k in report["kills"]] == ["checkpoint_write", "eval", "step_end"]
    assert all(k[4] for k in report["kills"]), report  # every resume point equals the uninterrupted run's
    assert report["problems"] == []


def test_two_processes_agree_to_checkpoint_when_only_one_is_signalled(tmp_path):
    """SIGUSR1 to rank 1 alone (srun signals every task, but not at the same instant): both ranks finish the step,
    rank 0 writes the checkpoint, both exit 143; a 2-process resume then logs each step exactly once."""
    import psutil

    args = ["train", f"hydra.run.dir={tmp_path}", *harness.OVERRIDES, "trainer.steps=4", "trainer.save_every=0"]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "conf/accelerate/cpu_ddp.yaml",
               "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "dynamo_cli", *args]
    launcher = subprocess.Popen(command, cwd=REPO, env={**ENV, "OMP_NUM_THREADS": "1"}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics, deadline = tmp_path / "metrics.jsonl", time.time() + 600
    while not (metrics.exists() and any("train/loss" in r for r in read_jsonl(metrics))):
        assert launcher.poll() is None and time.time() < deadline, "run ended before its first step"
        time.sleep(0.1)
    rank1 = [p for p in psutil.Process(launcher.pid).children(recursive=True)
             if "dynamo_cli" in " ".join(p.cmdline()) and p.environ().get("RANK") == "1"]
    assert len(rank1) == 1
    rank1[0].send_signal(signal.SIGUSR1)
    _, err = launcher.communicate(timeout=600)
    assert "dynamo train: preempted: a preemption signal (on some process): checkpoint" in err  # rank 0 speaks
    assert "exitcode  : 143" in err or launcher.returncode == 143, err[-3000:]
    step = checkpoint.load_trainer_state(checkpoint.latest(tmp_path / "checkpoints"))["totals"]["step"]
    assert 1 <= step < 4 and not (tmp_path / "checkpoints" / "final").exists()

    command[command.index("--main_process_port") + 1] = str(free_port())
    resumed = subprocess.run([*command, "trainer.resume=auto"], cwd=REPO, env={**ENV, "OMP_NUM_THREADS": "1"}, text=True,
                             capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in read_jsonl(metrics) if "train/loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in read_jsonl(metrics) if "eval/greedy_pass1" in r] == [0, 2, 4]
