"""Kill anywhere: SIGKILL a `dynamo train` run at N moments, resume it after each, and check it ends exactly
where an uninterrupted run of the same seed ends.

    python -m bench.faults [--kills N] [--seed S] [--steps T] [--work-dir DIR]      (make bench-faults: N = 10)

The moments cycle through the named fault points (dynamo_cli/runtime/faultpoints.py: a checkpoint half written, an
evaluation computed but not logged, a step logged but not checkpointed) and random wall-clock instants
(start-up, generation, update, anything), with the k-th occurrence and the instant drawn from a seeded generator.
Every attempt after a kill is the same command plus `trainer.resume=auto`. Exact means: the final weights are
bit-identical, every record of metrics.jsonl (timings aside) and every line of rollouts.jsonl equal the
uninterrupted run's, and each step appears exactly once in both files. A kill that came after the run had
finished does not count; the harness keeps killing until N kills landed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, BenchResult, print_result

POINTS = ("checkpoint_write", "eval", "step_end", "random")
# the golden run's tiny model from its random init (no SFT needed) and every batch size explicit: `auto` follows free
# memory, which differs between attempts
OVERRIDES = [
    "logger=none", "device=cpu", "model.hidden_size=64", "model.num_layers=2", "model.intermediate_size=128",
    "model.num_heads=4", "task.levels=[L1]", "task.num_train=200", "task.num_test_per_level=4", "eval.n_samples=0",
    "eval.batch_size=32", "trainer.prompts_per_step=4", "rollout.n=4", "rollout.max_batch_size=64",
    "algorithm.micro_batch_size=16", "algorithm.mini_batches=2", "optim.lr=1e-3", "trainer.save_every=1",
    "trainer.eval_every=2", "trainer.dump_rollouts=true", "trainer.prompt_pool=null",
    "trainer.keep_last=100",  # every step's checkpoint stays: each resume point is compared with the uninterrupted run's
]


def plan_kills(n: int, *, seed: int, steps: int, seconds: float) -> list[tuple[str, float]]:
    """n kill moments: (point, k) with the k-th occurrence of a named point, or ("random", s) seconds after
    start, cycling through POINTS so that each kind occurs. `seconds`: how long an uninterrupted run takes."""
    rng = random.Random(seed)
    plan = []
    for i in range(n):
        point = POINTS[i % len(POINTS)]
        if point == "random":
            plan.append((point, round(rng.uniform(0.0, seconds), 2)))
        else:  # an attempt reaches each point about once a step (eval: every eval_every steps and at step 0)
            plan.append((point, float(rng.randint(1, max(1, steps // 2)))))
    return plan


def train(run_dir: Path, *, steps: int, seed: int, extra: list[str] = (), env: dict | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "dynamo_cli", "train", f"hydra.run.dir={run_dir}", f"trainer.steps={steps}",
               f"seed={seed}", *OVERRIDES, *extra]
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true", **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, what: str) -> None:
    _, err = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"{what} failed ({process.returncode}):\n{err[-3000:]}")


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def comparable(run_dir: Path) -> list[dict]:
    """metrics.jsonl without what depends on the clock."""
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/")} for r in records(run_dir / "metrics.jsonl")]


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoints" / "final" / "model.safetensors"))


def resume_point(killed: Path, straight: Path) -> tuple[int, bool]:
    """(step, exact) of the checkpoint the next attempt resumes from: its weights and optimiser state equal the
    uninterrupted run's at that step (step 0: no checkpoint yet, a fresh start, trivially exact)."""
    import torch

    from dynamo_cli.runtime.checkpoint import latest, load_trainer_state

    found = latest(killed / "checkpoints", quiet=True)
    if found is None:
        return 0, True
    step = load_trainer_state(found)["totals"]["step"]
    theirs = straight / "checkpoints" / (found.name if found.name == "final" else f"step-{step}")
    same_weights = (found / "model.safetensors").read_bytes() == (theirs / "model.safetensors").read_bytes()
    mine, other = (load_trainer_state(d)["optimizer"]["state"] for d in (found, theirs))
    same_adam = mine.keys() == other.keys() and all(
        torch.equal(mine[i][k], other[i][k]) for i in mine for k in mine[i])
    return step, same_weights and same_adam


def compare(killed: Path, straight: Path, *, steps: int) -> list[str]:
    """What differs between the killed-and-resumed run and the uninterrupted one (empty: an exact resume)."""
    problems = []
    a, b = weights(killed), weights(straight)
    if sorted(a) != sorted(b) or any(not a[k].equal(b[k]) for k in a):
        problems.append("final weights differ")
    if comparable(killed) != comparable(straight):
        problems.append("metrics.jsonl differs")
    train_steps = [r["step"] for r in records(killed / "metrics.jsonl") if "train/loss" in r]
    if train_steps != list(range(1, steps + 1)):
        problems.append(f"metrics.jsonl train steps {train_steps}")
    if records(killed / "rollouts.jsonl") != records(straight / "rollouts.jsonl"):
        problems.append("rollouts.jsonl differs")
    if json.loads((killed / "eval.json").read_text())["overall"] != json.loads((straight / "eval.json").read_text())["overall"]:
        problems.append("eval.json differs")
    return problems


def kill_anywhere(*, kills: int, seed: int, steps: int, work_dir: Path, straight: Path | None = None) -> dict:
    """Run the harness; returns {"kills": [(point, arg, last step logged, resume step, exact)], "problems": [...],
    "straight_s": ...}.
    `straight`: an uninterrupted run of the same command to compare with (run here when None)."""
    if straight is None:
        straight = work_dir / "straight"
        t0 = time.perf_counter()
        finish(train(straight, steps=steps, seed=seed), "the uninterrupted run")
        straight_s = time.perf_counter() - t0
    else:
        straight_s = float(json.loads((straight / "timing.json").read_text())["seconds"]) if (straight / "timing.json").exists() else 20.0
    killed = work_dir / "killed"
    plan = plan_kills(kills * 3, seed=seed, steps=steps, seconds=straight_s)  # spare moments for kills that came too late
    landed: list[tuple[str, float, int, int, bool]] = []
    for point, arg in plan:
        if len(landed) == kills:
            break
        if point == "random":
            process = train(killed, steps=steps, seed=seed, extra=["trainer.resume=auto"])
            try:
                process.wait(timeout=arg)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
        else:
            process = train(killed, steps=steps, seed=seed, extra=["trainer.resume=auto"], env={"DYNAMO_KILL_AT": f"{point}:{int(arg)}"})
        _, err = process.communicate(timeout=600)
        if process.returncode == -signal.SIGKILL:
            reached = max([r["step"] for r in records(killed / "metrics.jsonl")], default=-1)
            landed.append((point, arg, reached, *resume_point(killed, straight)))
        elif process.returncode != 0:
            raise RuntimeError(f"attempt {point}:{arg} failed ({process.returncode}):\n{err[-3000:]}")
        elif (killed / "checkpoints" / "final").exists():  # it finished before the kill: start over on a fresh dir
            import shutil

            shutil.rmtree(killed)
    finish(train(killed, steps=steps, seed=seed, extra=["trainer.resume=auto"]), "the resumed run")
    return {"kills": landed, "problems": compare(killed, straight, steps=steps), "straight_s": straight_s}


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs that must land (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run and of the kill moments")
    parser.add_argument("--steps", type=int, default=6, help="RL steps of the run (default 6)")
    parser.add_argument("--work-dir", help="where the runs go (default: a temporary dir)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dynamo-faults-") as tmp:
        work_dir = Path(args.work_dir or tmp)
        report = kill_anywhere(kills=args.kills, seed=args.seed, steps=args.steps, work_dir=work_dir)
    seconds = time.perf_counter() - start
    exact = not report["problems"] and all(k[4] for k in report["kills"])
    exact_points = sum(1 for k in report["kills"] if k[4])
    kinds = {p: sum(1 for k in report["kills"] if k[0] == p) for p in POINTS}
    command = f"python -m bench.faults --kills {args.kills} --seed {args.seed} --steps {args.steps}"
    lines = [
        f"{len(report['kills'])} SIGKILLs landed in a {args.steps}-step run (seed {args.seed}), each followed by "
        f"`trainer.resume=auto`: {', '.join(f'{v} at {k}' for k, v in kinds.items())}. "
        f"The uninterrupted run took {report['straight_s']:.1f} s; the harness {seconds:.0f} s.", "",
        "| kill | point | k / seconds | last step logged | resumes from step | resume point exact |", "|--:|---|--:|--:|--:|---|",
        *[f"| {i + 1} | {p} | {a:g} | {s} | {r} | {'yes' if e else 'NO'} |" for i, (p, a, s, r, e) in enumerate(report["kills"])], "",
        f"**{len(report['kills'])} kills, {exact_points} exact resumes** (each resume point's weights and Adam state equal the "
        f"uninterrupted run's at that step); final weights, metrics.jsonl, rollouts.jsonl and eval.json "
        + ("identical to the uninterrupted run's" if not report["problems"] else f"NOT identical: {'; '.join(report['problems'])}"),
    ]
    result = BenchResult(name="kill anywhere", command=command, lines=lines,
                         ratios={"kills_landed": float(len(report["kills"])), "exact_resumes": float(exact_points),
                                 "final_identical": float(not report["problems"])})
    print_result(result)
    if not exact:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
