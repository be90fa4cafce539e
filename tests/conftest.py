"""Shared fixtures: a tiny SFT checkpoint made once per session, a CLI runner, and the tiers.

Tiers by folder: tests/unit (mirrors src/dynamo_cli) and tests/config run in `make test`; tests/e2e holds real runs
(subprocesses, several processes, sweeps) and is marked `e2e`: `make test-all` runs it, `make test` only its tests
marked `smoke`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}


def dynamo(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the `dynamo` CLI as a user would (a separate process, no TTY)."""
    result = subprocess.run([sys.executable, "-m", "dynamo_cli", *args], cwd=REPO, env=ENV, text=True,
                            capture_output=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"dynamo {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def train_killed_after_checkpoint(run_dir: Path, *args: str, checkpoint: str = "step-2") -> None:
    """`dynamo train` in the background, SIGKILLed as soon as checkpoints/<checkpoint> is complete (what an OOM kill
    or a lost node leaves behind); fails if the run ends first or takes over 300 s to get there."""
    process = subprocess.Popen([sys.executable, "-m", "dynamo_cli", "train", f"hydra.run.dir={run_dir}", *args],
                               cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / checkpoint / "trainer_state.pt").exists():
        assert process.poll() is None and time.time() < deadline, f"run ended before its checkpoint {checkpoint}"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="session")
def sft_checkpoint(tmp_path_factory) -> Path:
    """A briefly trained tiny model (seconds, not minutes): enough to load, generate and train from.

    Trained on L1 (single-digit sums) only, so that it already solves some of them: RL smoke runs on L1
    then see groups with mixed rewards, i.e. a non-zero policy gradient."""
    run_dir = tmp_path_factory.mktemp("sft")
    dynamo("sft", "logger=none", f"hydra.run.dir={run_dir}", "trainer.steps=60", "trainer.eval_every=30",
           "trainer.log_every=20", "task.num_train=2000", "task.levels=[L1]")
    return run_dir / "checkpoints" / "final"


def pytest_collection_modifyitems(config, items):
    e2e = REPO / "tests" / "e2e"
    for item in items:
        if e2e in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)
