"""`make bench`: measurements that print ratios taken in one run, never pass/fail thresholds.

Each script runs alone (`python -m bench.<name> [--quick]`) and returns a `BenchResult`;
`python -m bench.run_all` runs all four and writes the benchmark section of docs/results.md.
"""
