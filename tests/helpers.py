"""Helpers several test files share: composing configs in-process, launching several processes, reading a run's files."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import ENV, REPO
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from dynamo_cli.cli import CONF_DIR, register_resolvers, to_schema
from dynamo_cli.config.store import register_schemas

register_schemas()
register_resolvers()

# ---- from test_config.py
COMMANDS = ["sft", "train", "eval"]


ARITH_FIXTURE = CONF_DIR.parent / "tests" / "fixtures" / "arith_word_problems.jsonl"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose_schema(command: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_schema(compose(config_name=command, overrides=overrides))


# ---- from test_distributed.py
# ------------------------------------------------------------------------------- 2 processes vs 1
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stacks_then_kill(process: subprocess.Popen) -> tuple[str, str]:
    """SIGABRT the launcher's workers (torch's launcher starts each in a session of its own, so a process-group
    signal misses them, and they would outlive the test holding its pipes), then SIGKILL whatever is left."""
    workers = psutil.Process(process.pid).children(recursive=True)
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.send_signal(signal.SIGABRT)
    try:
        return process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        for leftover in [*workers, psutil.Process(process.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        return process.communicate()


def launch(processes: int, *args: str, config: str = "conf/accelerate/cpu_ddp.yaml") -> subprocess.CompletedProcess:
    """`accelerate launch --config_file <config> -m dynamo_cli ...`, as docs/scaling.md says."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
           "--num_processes", str(processes), "--main_process_port", str(free_port()), "-m", "dynamo_cli", *args, "device=cpu"]
    process = subprocess.Popen(cmd, cwd=REPO, env={**ENV, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:  # a hang: each worker prints every thread's stack (faulthandler, on SIGABRT)
        stdout, stderr = stacks_then_kill(process)
        raise AssertionError(f"{' '.join(cmd)} hung for 600 s; the processes' stacks:\n{stdout[-3000:]}\n{stderr[-12000:]}") from None
    result = subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def relative_distance(a: Path, b: Path, start: Path) -> float:
    """||θ_a - θ_b|| / ||θ_a - θ_start||: how far apart two runs ended, relative to how far they moved."""
    pa, pb, p0 = (load_file(p / "checkpoints/final/model.safetensors") if p != start else load_file(p / "model.safetensors")
                  for p in (a, b, start))
    apart = sum(float((pa[k].double() - pb[k].double()).square().sum()) for k in pa) ** 0.5
    moved = sum(float((pa[k].double() - p0[k].double()).square().sum()) for k in pa) ** 0.5
    assert moved > 0
    return apart / moved


TRAIN_2P = ["logger=none", "trainer.steps=3", "trainer.prompts_per_step=8", "rollout.n=4", "allocator.n_min=2",
            "allocator.n_max=8", "eval.max_problems=12", "eval.n_samples=2", "eval.ks=[1,2]", "trainer.eval_every=0",
            "algorithm.micro_batch_size=4", "task.num_train=2000", "task.levels=[L1]", "trainer.dump_rollouts=true",
            "optim.lr=1e-3", "trainer.save_every=2",
            # one update per step: with several, each process splits its own rows into mini-batches, which is a
            # different (equally random) split of the global batch than one process's, so losses differ after update 1
            "algorithm.mini_batches=1",
            "trainer.prompt_pool=8"]  # the same 8 prompts every step: from step 2 the allocator acts on their history


# ---- from test_recipes.py
TRAIN_SMALL = ["logger=none", "trainer.prompts_per_step=8", "rollout.n=4", "allocator.n_min=2", "allocator.n_max=8",
               "eval.max_problems=24", "eval.n_samples=2", "eval.ks=[1,2]", "algorithm.micro_batch_size=16",
               "task.num_train=2000", "task.levels=[L1]"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_metrics(run_dir: Path) -> dict:
    last = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r][-1]
    return {k: v for k, v in last.items() if not k.startswith("time")}


# ---- from test_sweep.py
# ------------------------------------------------------------------------------- synthetic runs
def write_run(path: Path, *, allocator: str, modulator: str, seed: int, curve: list[float], finished: bool = True,
              tokens_per_rollout: int = 3, n: int = 2, prompts: int = 4, eval_every: int = 5) -> Path:
    """A fake train run dir: config.yaml, metrics.jsonl (step records + eval records at 0, 5, 10, ...) and,
    if finished, eval.json. curve[i] is test pass@1 at step i * eval_every; greedy = pass@1 + 0.05."""
    path.mkdir(parents=True)
    steps = eval_every * (len(curve) - 1)
    config = {"seed": seed, "allocator": {"name": allocator, **({"n_min": 1, "n_max": 4} if allocator == "variance" else {})},
              "modulator": {"name": modulator}, "rollout": {"n": n},
              "trainer": {"steps": steps, "prompts_per_step": prompts, "eval_every": eval_every},
              "eval": {"max_problems": 8, "n_samples": 2, "temperature": 1.0}, "model": {"name": "tiny"},
              "task": {"name": "math"}, "optim": {"lr": 5e-5}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    records = []
    last = steps if finished else eval_every  # a crashed run stops at its second eval
    for step in range(last + 1):
        rollouts = step * n * prompts
        totals = {"rollout/total_rollouts": rollouts, "rollout/total_tokens": rollouts * tokens_per_rollout,
                  "time/elapsed_s": float(step)}
        if step:
            records.append({"step": step, "train/loss": 0.1, "time/step_s": 1.0, **totals})
        if step % eval_every == 0:
            p = curve[step // eval_every]
            records.append({"step": step, "eval/greedy_pass1": p + 0.05, "eval/pass@1": p, "eval/pass@2": min(1, p + 0.1),
                            "eval/L1/pass@1": p, **totals})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        final = curve[-1]
        (path / "eval.json").write_text(json.dumps({"n_samples": 2, "overall": {
            "problems": 8, "greedy": final + 0.05, "mean@n": final, "pass@1": final, "pass@2": min(1, final + 0.1)},
            "levels": {"L1": {"problems": 8, "greedy": final + 0.05, "pass@1": final}}}))
    return path


def write_synthetic_sweep(runs: Path) -> Path:
    """grpo x 3 seeds (final pass@1 0.5, 0.6, 0.7) and dynamo x 3 seeds of which seed 2 crashed at step 5."""
    curves = {("uniform", "none"): [[0.4, 0.45, 0.5], [0.4, 0.55, 0.6], [0.4, 0.65, 0.7]],
              ("variance", "dynamo"): [[0.4, 0.6, 0.7], [0.4, 0.7, 0.8], [0.4, 0.5, 0.5]]}
    job = 0
    for seed in range(3):
        for (allocator, modulator), per_seed in curves.items():
            write_run(runs / str(job), allocator=allocator, modulator=modulator, seed=seed, curve=per_seed[seed],
                      finished=not (modulator == "dynamo" and seed == 2), tokens_per_rollout=3 if allocator == "uniform" else 2)
            job += 1
    wandb_files = runs / "0" / "wandb" / "offline-run-1" / "files"  # W&B's own config.yaml is not a run
    wandb_files.mkdir(parents=True)
    (wandb_files / "config.yaml").write_text(yaml.safe_dump({"allocator": {"value": {"name": "uniform"}}, "seed": {"value": 0}}))
    return runs


# ---------------------------------------------------------------------------------- composition
def presets() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))


# ---- the code sandbox (tests/unit/verify, tests/config)
# Tests that run programs under bubblewrap skip where it is not installed, except under CI=true, where they run and
# fail: CI (.ci/run) installs it, and a sandbox test that silently skipped there would prove nothing.
needs_bubblewrap = pytest.mark.skipif(shutil.which("bwrap") is None and os.environ.get("CI") != "true",
                                      reason="bubblewrap (bwrap) is not installed: apt-get install bubblewrap")


# ---- task=reasoning_gym (tests/unit/tasks, tests/e2e)
# Its tests skip where reasoning-gym is not installed (`make reasoning-gym`), except under CI=true, where they run and fail:
# CI (.ci/run) installs it.
needs_reasoning_gym = pytest.mark.skipif(
    importlib.util.find_spec("reasoning_gym") is None and os.environ.get("CI") != "true",
    reason="reasoning-gym is not installed: make reasoning-gym (pip install -e '.[reasoning_gym]'); CI installs it")

