"""`make bench`: run the eight benchmarks and write the benchmark section of docs/results.md.

    python -m bench.run_all [--quick] [--checkpoint DIR] [--sweep-dir DIR] [--results PATH|none]

Every number is a ratio measured in this one run on this machine; nothing here passes or fails.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench import allocation, grad_variance, memory_estimate, overhead, overlap, rollout_engine, sample_efficiency, speed
from bench.common import REPO, checkpoint
from dynamo_cli.report.provenance import generated_line
from dynamo_cli.report.results_page import update_results_page
from dynamo_cli.report.tables import markdown_table


def main(argv: list[str] | None = None) -> list:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds to a minute (for tests)")
    parser.add_argument("--checkpoint", help="SFT checkpoint for benches a, c, d (default: the latest under outputs/, else train one)")
    parser.add_argument("--sweep-dir", help="sweep whose runs bench b reuses (default: the latest under outputs/sweep)")
    parser.add_argument("--results", default=str(REPO / "docs" / "results.md"),
                        help="results page whose bench section is rewritten; 'none' leaves it alone")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    ckpt, _ = checkpoint(args.checkpoint, quick=args.quick)  # one checkpoint for every bench that needs one
    quick = ["--quick"] if args.quick else []
    shared = ["--checkpoint", str(ckpt), *quick]
    results = []
    for name, run in (("gradient variance", lambda: grad_variance.main(shared)),
                      ("sample efficiency", lambda: sample_efficiency.main([*(["--sweep-dir", args.sweep_dir] if args.sweep_dir else []), *quick])),
                      ("overhead", lambda: overhead.main(shared)),
                      ("rollout engine", lambda: rollout_engine.main(shared)),
                      ("memory estimate", lambda: memory_estimate.main(quick)),
                      ("speed against the baseline", lambda: speed.main(shared)),
                      ("one-step-off-policy", lambda: overlap.main(shared)),
                      ("allocation at realistic sizes", lambda: allocation.main(quick))):
        print(f"== bench: {name}", flush=True)
        results.append(run())
    seconds = time.perf_counter() - start

    command = "python -m bench.run_all --quick" if args.quick else "make bench"
    rows = [[f"{r.name}: `{key}`", "n/a" if value is None else f"{value:.3f}"]
            for r in results for key, value in r.ratios.items()]
    body = "\n".join([
        "## Benchmarks", "", generated_line(command), "",
        (f"Ratios measured in one run ({seconds / 60:.1f} min), each against its own baseline on the same machine; there "
        "are no pass/fail thresholds. `python -m bench.<name> --help` describes each measurement."), "",
        markdown_table(["ratio", "value"], rows), "",
        *[r.markdown() for r in results],
    ])
    if args.results.lower() != "none":
        page = update_results_page(Path(args.results), section="bench", body=body)
        print(f"bench: updated the bench section of {page} ({seconds:.0f} s)")
    return results


if __name__ == "__main__":
    main()
