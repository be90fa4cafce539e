"""Bench h: allocate() at a realistic size: P prompts drawn from a pool whose every prompt is already in the history.

A run revisits a fixed prompt pool (trainer.prompt_pool), so after its first epoch every drawn id is in the
allocator's history and each step draws a fresh set of P of them. Here the history holds `--pool` prompts (random
success histories, 0..40 lifetime rollouts each, so some are still unexplored; six tags), and each repeat times one
allocate() of a fresh draw of P distinct ids (wall clock, the median over the repeats after two untimed ones;
nothing is cached across draws). Allocators with a reference implementation are checked against it on every draw:

    variance  the same estimates, with the exploration need by torch.ceil and the water-filling's remainders handed
              out by a full stable sort (maths.py truncates and selects in O(P) instead)
    knapsack  the top-K marginal gains of the whole (P, n_max - n_min) table by a full stable sort (knapsack.py
              computes only the rows' prefixes that can be chosen)

    python -m bench.allocation [--prompts P] [--pool N] [--repeats R] [--seed S] [--quick]
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import time

import torch

from bench.common import BenchResult, print_result
from dynamo_cli.allocation.base import ALLOCATORS
from dynamo_cli.allocation.knapsack import knapsack_value
from dynamo_cli.allocation.maths import laplace_rate, uniform_rollouts
from dynamo_cli.allocation.variance import shrunk_estimates, variance_priority

N_PER_PROMPT = 8  # rollout.n: the budget per prompt (train's default)
LEVELS = 6  # tags of the pool's prompts


def filled(name: str, *, pool: int, seed: int):
    """The allocator `name` at its schema's defaults, its history holding `pool` prompts (one update of each), and
    the pool's (ids, tags)."""
    allocator = ALLOCATORS.build(ALLOCATORS.schema(name)(), n=N_PER_PROMPT)
    g = torch.Generator().manual_seed(seed)
    ids, tags = [f"pool/{i}" for i in range(pool)], [f"L{i % LEVELS + 1}" for i in range(pool)]
    attempts = torch.randint(0, 41, (pool,), generator=g).double()  # 0..40 lifetime rollouts: some unexplored
    successes = torch.binomial(attempts, torch.rand(pool, generator=g).double(), generator=g)
    allocator.update(ids, successes=successes, attempts=attempts, tags=tags)
    return allocator, ids, tags


def draws(pool: int, *, prompts: int, repeats: int, seed: int) -> list[list[int]]:
    """`repeats` fresh draws of `prompts` distinct pool positions, as a sampler's steps would draw them."""
    g = torch.Generator().manual_seed(seed + 1)
    return [torch.randperm(pool, generator=g)[:prompts].tolist() for _ in range(repeats)]


def time_allocate(allocator, ids: list[str], tags: list[str], picks: list[list[int]], *, warmup: int = 2) -> tuple[float, list]:
    """(median seconds of allocate() over the draws after the first `warmup`, [(draw ids, draw tags, Allocation)] of
    those). The ids lists are built before the clock starts, as collect builds them before it calls allocate(); a
    collection of the garbage the history's setup left runs first, as it would have by the time a run is under way."""
    for pick in picks[:warmup]:
        allocator.allocate([ids[i] for i in pick], tags=[tags[i] for i in pick])
    gc.collect()
    seconds, results = [], []
    for pick in picks[warmup:]:
        step_ids, step_tags = [ids[i] for i in pick], [tags[i] for i in pick]
        start = time.perf_counter()
        allocation = allocator.allocate(step_ids, tags=step_tags)
        seconds.append(time.perf_counter() - start)
        results.append((step_ids, step_tags, allocation))
    return statistics.median(seconds), results


# ------------------------------------------------------------------------------------------- references
def sorted_water_fill(*, weights, caps, budget: int):
    """maths.water_fill as first written: floor, then the remainders by a full stable sort."""
    w, caps = weights.double(), caps.long()
    if budget == 0:
        return torch.zeros_like(caps)
    level = torch.where(caps == 0, torch.zeros_like(w), caps / w.clamp(min=1e-300))
    order = torch.sort(level, stable=True).indices
    lvl, c, ws = level[order], caps[order].double(), w[order]
    caps_upto, w_after = torch.cumsum(c, 0), ws.sum() - torch.cumsum(ws, 0)
    j = int(torch.searchsorted(caps_upto + lvl * w_after, torch.tensor([float(budget)], dtype=torch.float64)).clamp(max=len(c) - 1))
    lam = (budget - (caps_upto[j] - c[j])) / (w_after[j] + ws[j])
    x = torch.minimum(lam * w, caps.double())
    alloc = x.floor().long()
    frac, short = x - alloc, budget - int(x.floor().long().sum())
    while short > 0:
        key = torch.where(alloc < caps, frac, torch.full_like(frac, -1.0))
        take = torch.sort(-key, stable=True).indices[: min(short, int((alloc < caps).sum()))]
        alloc[take] += 1
        frac[take] = -0.5
        short -= len(take)
    return alloc


def reference_variance(allocator, ids: list[str]) -> torch.Tensor:
    """VarianceAllocator.allocate's counts (prior=none) from a per-id lookup, torch.ceil and `sorted_water_fill`."""
    rows = [allocator._index[pid] for pid in ids]
    successes, attempts, total = (allocator._successes[rows], allocator._attempts[rows], allocator._total_attempts[rows])
    zeros = torch.zeros(len(ids), dtype=torch.float64)
    acc, variance = shrunk_estimates(successes=successes, attempts=attempts, prior_rate=zeros, prior_variance=zeros,
                                     prior_strength=zeros)
    a = allocator
    priority = variance_priority(acc=acc, variance=variance, unknown=total < a.explore_min_attempts,
                                 mastered_threshold=a.mastered_threshold, floor=a.floor,
                                 unexplored_priority=a.unexplored_priority, weight=a.weight)
    need = (a.explore_min_attempts - total).ceil().clamp(min=0).long()
    counts = uniform_rollouts(len(ids), a.n_min)
    left = a.n * len(ids) - a.n_min * len(ids)
    beyond = (need.clamp(max=a.n_max) - a.n_min).clamp(min=0)
    if int(beyond.sum()) <= left:
        counts, left = counts + beyond, left - int(beyond.sum())
    else:
        counts, left = counts + sorted_water_fill(weights=beyond.double(), caps=beyond, budget=left), 0
    return counts + sorted_water_fill(weights=priority, caps=a.n_max - counts, budget=left)


def full_table_knapsack(*, rate: torch.Tensor, budget: int, n_min: int, n_max: int) -> torch.Tensor:
    """knapsack_rollouts as first written: every marginal gain of the (P, n_max - n_min) table, the budget's largest
    by a full stable sort."""
    num, span = rate.numel(), n_max - n_min
    budget = min(max(int(budget), n_min * num), n_max * num)
    counts = uniform_rollouts(num, n_min)
    if span == 0 or budget == n_min * num:
        return counts
    n = torch.arange(n_min, n_max, dtype=torch.float64)
    p = rate.double()[:, None]
    gains = knapsack_value(rate=p, counts=n + 1) - knapsack_value(rate=p, counts=n)
    chosen = torch.argsort(-gains.flatten(), stable=True)[: budget - n_min * num]
    return counts + torch.bincount(chosen // span, minlength=num)


def reference_knapsack(allocator, ids: list[str]) -> torch.Tensor:
    rows = [allocator._index[pid] for pid in ids]
    rate = laplace_rate(successes=allocator._successes[rows], attempts=allocator._attempts[rows])
    return full_table_knapsack(rate=rate, budget=allocator.n * len(ids), n_min=allocator.n_min, n_max=allocator.n_max)


REFERENCES = {"variance": reference_variance, "knapsack": reference_knapsack}


def measure(name: str, *, prompts: int, pool: int, repeats: int, seed: int) -> dict:
    """One row of the table: median ms of allocate() and whether every draw's counts equal the reference's (None: none)."""
    allocator, ids, tags = filled(name, pool=pool, seed=seed)
    median, results = time_allocate(allocator, ids, tags, draws(pool, prompts=prompts, repeats=2 + repeats, seed=seed))
    reference = REFERENCES.get(name)
    identical = None if reference is None else all(torch.equal(allocation.counts, reference(allocator, step_ids))
                                                   for step_ids, _, allocation in results)
    return {"allocator": name, "prompts": prompts, "pool": pool, "median_ms": 1e3 * median, "identical": identical}


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(prog="python -m bench.allocation", description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, help="P, prompts per step (default 4096; quick 512)")
    parser.add_argument("--pool", type=int, help="prompts in the history (default 10^6; quick 10^4)")
    parser.add_argument("--repeats", type=int, help="fresh draws timed, median reported (default 20; quick 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allocators", nargs="+", default=ALLOCATORS.names(), choices=ALLOCATORS.names())
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds (for tests)")
    args = parser.parse_args(argv)
    prompts = args.prompts or (512 if args.quick else 4096)
    pool = args.pool or (10**4 if args.quick else 10**6)
    repeats = args.repeats or (5 if args.quick else 20)
    rows = [measure(name, prompts=prompts, pool=pool, repeats=repeats, seed=args.seed) for name in args.allocators]
    command = "python -m bench.allocation" + (" --quick" if args.quick else "")
    schema = {r["allocator"]: ALLOCATORS.schema(r["allocator"])() for r in rows}
    lines = [
        (f"allocate() of {prompts:,} prompts drawn afresh from a pool of {pool:,} already in the history, each allocator at "
         f"its schema's defaults with rollout.n = {N_PER_PROMPT}; the median of {repeats} draws, wall clock, CPU."), "",
        "| allocator | P | pool | median ms | allocations identical to the reference |", "|---|--:|--:|--:|---|",
        *[f"| {r['allocator']} | {r['prompts']:,} | {r['pool']:,} | {r['median_ms']:.2f} | "
          f"{'n/a' if r['identical'] is None else r['identical']} |" for r in rows], "",
        "Defaults: " + "; ".join(f"{name}: {', '.join(f'{f.name}={getattr(s, f.name)}' for f in dataclasses.fields(s) if f.name != 'name')}"
                                 for name, s in schema.items()) + ".",
    ]
    ratios = {f"allocate_ms[{r['allocator']}]": r["median_ms"] for r in rows}
    ratios |= {f"identical[{r['allocator']}]": float(r["identical"]) for r in rows if r["identical"] is not None}
    result = BenchResult(name="h. Allocation at realistic sizes", command=command, lines=lines, ratios=ratios)
    print_result(result)
    return result


if __name__ == "__main__":
    main()
