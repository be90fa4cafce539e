"""What bubblewrap costs per program: task=code's sandbox (verify/sandbox.py) running a trivial program and its one
check, with task.isolation=bubblewrap against none, interleaved (bubblewrap, none, bubblewrap, ...), median wall time
per program. Measured outside `make bench`; docs/robustness.md quotes it.

    python -m bench.sandbox [--runs 50]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from dynamo_cli.verify.sandbox import Check, Limits, Sandbox

PROGRAM = "def add(a, b):\n    return a + b\n"
CHECKS = [Check("add(1, 2)", "==", 3)]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="programs per isolation")
    args = parser.parse_args(argv)
    sandboxes = {name: Sandbox(Limits(), isolation=name) for name in ("bubblewrap", "none")}
    for sandbox in sandboxes.values():  # the first run of each pays one-off costs (the bind list, page cache)
        sandbox.check_works()
    times: dict[str, list[float]] = {name: [] for name in sandboxes}
    for _ in range(args.runs):
        for name, sandbox in sandboxes.items():
            start = time.perf_counter()
            outcome = sandbox.run(PROGRAM, CHECKS)
            times[name].append(time.perf_counter() - start)
            assert outcome.passed == (True,), outcome
    medians = {name: statistics.median(values) for name, values in times.items()}
    cost = medians["bubblewrap"] - medians["none"]
    print(f"{args.runs} runs each, interleaved, {os.cpu_count()} CPUs, {'root' if os.geteuid() == 0 else 'not root'}: "
          f"median per program bubblewrap {medians['bubblewrap'] * 1e3:.1f} ms, none {medians['none'] * 1e3:.1f} ms "
          f"(bubblewrap costs {cost * 1e3:.1f} ms, x{medians['bubblewrap'] / medians['none']:.2f}); "
          f"p90 bubblewrap {statistics.quantiles(times['bubblewrap'], n=10)[-1] * 1e3:.1f} ms, "
          f"none {statistics.quantiles(times['none'], n=10)[-1] * 1e3:.1f} ms")
    return {**medians, "cost": cost}


if __name__ == "__main__":
    main()
