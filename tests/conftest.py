"""Shared fixtures: a tiny SFT checkpoint made once per session, and a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}


def dynamo(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the `dynamo` CLI as a user would (a separate process, no TTY)."""
    result = subprocess.run([sys.executable, "-m", "dynamo_cli", *args], cwd=REPO, env=ENV, text=True,
                            capture_output=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"dynamo {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def sft_checkpoint(tmp_path_factory) -> Path:
    """A briefly trained tiny model (seconds, not minutes): enough to load, generate and train from.

    Trained on L1 (single-digit sums) only, so that it already solves some of them: RL smoke runs on L1
    then see groups with mixed rewards, i.e. a non-zero policy gradient."""
    run_dir = tmp_path_factory.mktemp("sft")
    dynamo("sft", "logger=none", f"hydra.run.dir={run_dir}", "trainer.steps=60", "trainer.eval_every=30",
           "trainer.log_every=20", "task.num_train=2000", "task.levels=[L1]")
    return run_dir / "checkpoints" / "final"
