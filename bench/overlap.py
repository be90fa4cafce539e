"""Bench g: one-step-off-policy (rollout.one_step_off_policy=true) against on-policy, in this tree, side by side.

For GRPO with one update per step and for DynaMO at the defaults (4 mini-batches): `dynamo train` on-policy and
off-policy, alternating run by run, at 1 torch thread and at the machine's default; the median of time/step_s over
the steps after the first (the first has nothing to overlap), off / on at the same thread count, and off-policy at
one thread against on-policy at the default (the same cores, split between generation and the update instead of
shared by each in turn).

    python -m bench.overlap [--checkpoint DIR] [--repeats R] [--steps S] [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics

from bench.common import REPO, BenchResult, checkpoint, print_result, shown
from bench.speed import train_run

CASES = {"GRPO, 1 update/step": ["allocator=uniform", "modulator=none", "algorithm.mini_batches=1"],
         "DynaMO": ["allocator=variance", "modulator=dynamo"]}


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(prog="python -m bench.overlap", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="SFT checkpoint dir (default: the latest under outputs/, else train one)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats, median reported (default 2; quick 1)")
    parser.add_argument("--steps", type=int, help="train steps per run, the first left out (default 6; quick 3)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for tests)")
    args = parser.parse_args(argv)
    repeats, steps = args.repeats or (1 if args.quick else 2), args.steps or (3 if args.quick else 6)
    ckpt, how = checkpoint(args.checkpoint, quick=args.quick)
    cases = dict(list(CASES.items())[:1]) if args.quick else CASES
    threads = {"1 thread": 1, "default threads": None}
    modes = {"on": "rollout.one_step_off_policy=false", "off": "rollout.one_step_off_policy=true"}
    seconds: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(repeats):
        for case, overrides in cases.items():
            for thread_name, count in threads.items():
                for mode, flag in modes.items():  # on, off, on, off: drift hits both alike
                    row = train_run(REPO, ckpt, [*overrides, flag], steps=steps, quick=args.quick, threads=count)
                    seconds.setdefault((case, thread_name, mode), []).append(row["step_s"])
    med = {key: statistics.median(v) for key, v in seconds.items()}
    lines = [f"Checkpoint `{shown(ckpt)}` ({how}); {repeats} interleaved repeat(s), medians; {steps} steps per run, the first "
             f"left out; CPU, {os.cpu_count()} cores.", "",
             "| case | threads | on-policy step, s | off-policy step, s | off / on |", "|---|---|--:|--:|--:|"]
    ratios: dict[str, float | None] = {}
    for case in cases:
        for thread_name in threads:
            on, off = med[case, thread_name, "on"], med[case, thread_name, "off"]
            lines.append(f"| {case} | {thread_name} | {on:.3f} | {off:.3f} | {off / on:.3f} |")
            ratios[f"off_over_on[{case}, {thread_name}]"] = off / on
        best_on = med[case, "default threads", "on"]
        ratios[f"off_1_thread_over_on_default[{case}]"] = med[case, "1 thread", "off"] / best_on
    lines += ["", ("Off-policy generates step t+1 in a background thread while step t updates; on a CPU both halves "
                   "compete for the same cores (and the GIL), so the ratio says whether the overlap pays on this "
                   "machine. Where generation has hardware of its own the overlap is the point; that is not measured here.")]
    result = BenchResult(name="g. One-step-off-policy against on-policy", command="python -m bench.overlap" + (" --quick" if args.quick else ""),
                         lines=lines, ratios=ratios)
    print_result(result)
    return result


if __name__ == "__main__":
    main()
