"""Bench f: this tree's speed against a baseline commit, measured side by side in one run.

The baseline (default 3983b68, main before the speed work) is exported with `git archive` into a temporary directory; every measurement
runs in a subprocess whose PYTHONPATH puts that tree's (or this tree's) `src` first, and the two alternate
(baseline, new, baseline, new, ...) so drift on a shared machine hits both alike. Medians over the repeats.

1. Step time: `dynamo train` for a few steps of GRPO (allocator=uniform modulator=none) and of DynaMO
   (allocator=variance modulator=dynamo), at the embedded defaults (4 mini-batches) and with one update per
   step; the median of time/step_s over the steps after the first, new / baseline.
2. Rollout engine: generate() against the bare batched forward-pass bound (bench.rollout_engine's), both trees.
3. Padding waste: rollout/padding_waste and train/padding_waste of the new tree's train runs (the baseline
   logged none); and the completion-slot waste 1 - valid tokens / (N x Tc) of both trees' generate().
4. allocate() for 10^6 prompts with a fresh draw of ids each repeat (no cached lookup), both trees, and whether
   their allocations are identical; the ids as collect passes them, a plain list of str.

    python -m bench.speed [--baseline REF] [--checkpoint DIR] [--repeats R] [--steps S] [--quick]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, BenchResult, checkpoint, print_result, shown

CASES = {  # name -> overrides of `dynamo train`
    "GRPO": ["allocator=uniform", "modulator=none"],
    "DynaMO": ["allocator=variance", "modulator=dynamo"],
    "GRPO, 1 update/step": ["allocator=uniform", "modulator=none", "algorithm.mini_batches=1"],
    "DynaMO, 1 update/step": ["allocator=variance", "modulator=dynamo", "algorithm.mini_batches=1"],
}
QUICK_CASES = ("GRPO, 1 update/step", "DynaMO, 1 update/step")



# the baseline: main's last commit before the speed work (no reuse_forward, no padding cuts)
BASELINE = "3983b68"

def export(ref: str, into: Path) -> str:
    """`git archive REF src conf` unpacked into `into`; returns the commit's short hash."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], check=True, text=True,
                            capture_output=True).stdout.strip()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "src", "conf"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def in_tree(tree: Path, args: list[str], *, cwd: Path, threads: int | None = None) -> subprocess.CompletedProcess:
    """python ARGS with `tree/src` first on the path (then this repository, for the bench package); `threads`:
    OMP_NUM_THREADS for the run (None: torch's default, whatever the caller's environment says)."""
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{REPO}", "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true"}
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, text=True, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} in {tree} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def worker(tree: Path, kind: str, **options) -> dict:
    """One measurement in a subprocess on `tree`'s code: this file's `--worker KIND`; the last stdout line is JSON."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    out = in_tree(tree, [str(Path(__file__).resolve()), "--worker", kind, *flags], cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_run(tree: Path, ckpt: Path, overrides: list[str], *, steps: int, quick: bool, threads: int | None = None) -> dict:
    """Median time/step_s over the steps after the first, and the padding metrics where the tree logs them."""
    size = (["trainer.prompts_per_step=8", "rollout.n=4", "task.num_train=500"] if quick else [])
    with tempfile.TemporaryDirectory() as tmp:
        in_tree(tree, ["-m", "dynamo_cli", "train", f"model.path={ckpt}", f"hydra.run.dir={tmp}", f"trainer.steps={steps}",
                       "trainer.eval_every=0", "trainer.save_every=0", "eval.max_problems=4", "eval.n_samples=0", "logger=none",
                       "device=cpu", *size, *overrides], cwd=tree, threads=threads)
        records = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    steps_ = [r for r in records if "time/step_s" in r]
    kept = steps_[1:] if len(steps_) > 1 else steps_
    row = {"step_s": statistics.median(r["time/step_s"] for r in kept)}
    for key in ("rollout/padding_waste", "train/padding_waste"):
        if all(key in r for r in kept):
            row[key] = statistics.mean(r[key] for r in kept)
    return row


# ------------------------------------------------------------------------------------- workers (run on either tree)
def rollout_worker(ckpt: str, seed: int, repeats: int, quick: bool) -> dict:
    import torch

    from bench.common import from_tree, load, prompt_batch, warm_history
    from bench.rollout_engine import bare_loop

    math = from_tree("dynamo_cli.config.task:MathTaskConfig", "dynamo_cli.config:MathTaskConfig")
    generate = from_tree("dynamo_cli.rollout.hf:generate", "dynamo_cli.rollout:generate")

    torch.manual_seed(seed)
    model, tokenizer, task = load(Path(ckpt))
    P, n = (8, 4) if quick else (64, 8)
    problems = prompt_batch(task, P, seed=seed)
    max_new_tokens = math().max_new_tokens
    allocator, prompts = warm_history(model, tokenizer, task, problems, n=n, rollouts_per_prompt=8, seed=seed,
                                      max_new_tokens=max_new_tokens)
    counts = allocator.allocate([p.id for p in problems]).counts
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    rows = [encoded[i] for i in torch.repeat_interleave(torch.arange(P), counts).tolist()]
    engine, bound, waste = [], [], []
    for r in range(repeats + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        out = generate(model, tokenizer, prompts, counts=counts, max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0,
                       seed=seed + r, max_batch_size=512)
        seconds = time.perf_counter() - t0
        width = out.completion_mask.shape[1]
        bare = bare_loop(model, rows, pad_id=tokenizer.pad_token_id, steps=width, max_batch_size=512)
        if r:
            engine.append(int(out.completion_mask.sum()) / seconds)
            bound.append(len(rows) * width / bare)
            waste.append(1 - int(out.completion_mask.sum()) / out.completion_mask.numel())
    return {"engine": statistics.median(engine), "bound": statistics.median(bound), "slot_waste": statistics.mean(waste)}


def alloc_worker(prompts: int, repeats: int, seed: int) -> dict:
    import torch

    from bench.common import variance_allocator

    allocator = variance_allocator(8)
    g = torch.Generator().manual_seed(seed)
    pool = [f"p{i}" for i in range(2 * prompts)]  # twice the draw: each repeat draws a different half
    tags = [f"L{i % 6 + 1}" for i in range(2 * prompts)]
    attempts = torch.randint(0, 41, (2 * prompts,), generator=g).double()
    successes = torch.binomial(attempts, torch.rand(2 * prompts, generator=g).double(), generator=g)
    allocator.update(pool, successes=successes, attempts=attempts, tags=tags)
    seconds, digest = [], hashlib.sha256()
    for r in range(-1, repeats):  # r = -1: an untimed warm-up on a draw of its own
        draw = torch.randperm(2 * prompts, generator=torch.Generator().manual_seed(seed + r % (repeats + 1)))[:prompts].tolist()
        ids = [pool[i] for i in draw]
        t0 = time.perf_counter()
        counts = allocator.allocate(ids, tags=[tags[i] for i in draw]).counts
        if r >= 0:
            seconds.append(time.perf_counter() - t0)
            digest.update(counts.numpy().tobytes())
    return {"seconds": statistics.median(seconds), "counts_sha256": digest.hexdigest()}


def run_worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=("rollout", "alloc"))
    parser.add_argument("--ckpt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=10**6)
    parser.add_argument("--quick", default="False")
    a = parser.parse_args(argv)
    if a.worker == "rollout":
        result = rollout_worker(a.ckpt, a.seed, a.repeats, a.quick == "True")
    else:
        result = alloc_worker(a.prompts, a.repeats, a.seed)
    print(json.dumps(result))


# ------------------------------------------------------------------------------------------------------ main
def ratio(new: float | None, old: float | None) -> float | None:
    return None if new is None or not old else new / old


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help=f"git ref measured against (default {BASELINE})")
    parser.add_argument("--checkpoint", help="SFT checkpoint dir (default: the latest under outputs/, else train one)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats per measurement, median reported (default 3; quick 1)")
    parser.add_argument("--steps", type=int, help="train steps per run, the first left out (default 4; quick 2)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for tests)")
    args = parser.parse_args(argv)
    repeats, steps = args.repeats or (1 if args.quick else 3), args.steps or (2 if args.quick else 4)
    ckpt, how = checkpoint(args.checkpoint, quick=args.quick)
    ckpt = ckpt.resolve()
    cases = {k: CASES[k] for k in QUICK_CASES} if args.quick else CASES
    alloc_prompts = 10**4 if args.quick else 10**6
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        commit = export(args.baseline, base)
        trees = {"baseline": base, "new": REPO}
        steps_s = {(t, c): [] for t in trees for c in cases}
        padding: dict[str, list[float]] = {}
        rollout = {t: [] for t in trees}
        alloc = {t: [] for t in trees}
        for _ in range(repeats):
            for case, overrides in cases.items():
                for tree_name, tree in trees.items():  # interleaved: baseline then new, case by case
                    row = train_run(tree, ckpt, overrides, steps=steps, quick=args.quick)
                    steps_s[tree_name, case].append(row["step_s"])
                    for key in ("rollout/padding_waste", "train/padding_waste"):
                        if tree_name == "new" and key in row:
                            padding.setdefault(f"{key} ({case})", []).append(row[key])
            for tree_name, tree in trees.items():
                rollout[tree_name].append(worker(tree, "rollout", ckpt=ckpt, repeats=1 if args.quick else 3, quick=args.quick))
                alloc[tree_name].append(worker(tree, "alloc", prompts=alloc_prompts, repeats=1 if args.quick else 3))
    med = {key: statistics.median(v) for key, v in steps_s.items()}
    engine = {t: statistics.median(r["engine"] / r["bound"] for r in rollout[t]) for t in trees}
    slot_waste = {t: statistics.median(r["slot_waste"] for r in rollout[t]) for t in trees}
    alloc_s = {t: statistics.median(r["seconds"] for r in alloc[t]) for t in trees}
    identical = all(a["counts_sha256"] == b["counts_sha256"] for a, b in zip(alloc["baseline"], alloc["new"], strict=True))
    waste = {k: statistics.mean(v) for k, v in padding.items()}
    step_ratios = {case: ratio(med["new", case], med["baseline", case]) for case in cases}
    command = "python -m bench.speed" + (" --quick" if args.quick else "")
    lines = [
        (f"Baseline `{args.baseline}` = {commit} (git archive), against this tree; checkpoint `{shown(ckpt)}` ({how}); "
         f"{repeats} interleaved repeat(s), medians; {steps} train steps per run, the first left out; CPU."), "",
        "| measurement | baseline | new | new / baseline |", "|---|--:|--:|--:|",
        *[f"| {case} step, s | {med['baseline', case]:.3f} | {med['new', case]:.3f} | {step_ratios[case]:.3f} |" for case in cases],
        f"| rollout engine / bare bound | {engine['baseline']:.3f} | {engine['new']:.3f} | {ratio(engine['new'], engine['baseline']):.3f} |",
        (f"| completion-slot waste 1 − valid / (N·Tc) | {slot_waste['baseline']:.3f} | {slot_waste['new']:.3f} | "
         f"{ratio(slot_waste['new'], slot_waste['baseline']) or 0:.3f} |"),
        (f"| allocate(), {alloc_prompts:,} prompts, s | {alloc_s['baseline']:.3f} | {alloc_s['new']:.3f} | "
         f"{ratio(alloc_s['new'], alloc_s['baseline']):.3f} |"), "",
        f"Allocations identical in both trees: **{identical}**.", "",
        "| padding (new tree, mean over steps) | share |", "|---|--:|",
        *[f"| {key} | {value:.3f} |" for key, value in waste.items()], "",
        ("The completion-slot waste counts every decode slot of the (N, Tc) layout, so it does not move when finished "
         "rows leave the batch; rollout/padding_waste counts the positions the engine really fed."),
    ]
    ratios = {**{f"step_new_over_baseline[{case}]": r for case, r in step_ratios.items()},
              "engine_over_bound_new": engine["new"], "engine_over_bound_baseline": engine["baseline"],
              f"allocate_{alloc_prompts}_seconds_new": alloc_s["new"], f"allocate_{alloc_prompts}_seconds_baseline": alloc_s["baseline"],
              "allocations_identical": float(identical), **{f"padding_waste[{k}]": v for k, v in waste.items()}}
    result = BenchResult(name="f. Speed against the baseline", command=command, lines=lines, ratios=ratios)
    print_result(result)
    return result


if __name__ == "__main__":
    if "--worker" in sys.argv:
        run_worker(sys.argv[1:])
    else:
        main()
