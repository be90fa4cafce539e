"""allocate() at a realistic size: P = 4096 prompts drawn from a pool of 10^6 already in the history take at most
10 ms (the median over fresh draws; one more batch when the first ran into other processes' load), and the fast
paths behind that give the allocations their textbook versions give (bench/allocation.py holds those references and
the same measurement, as a table).

DYNAMO_SKIP_TIMING=1 skips the timing assertion (not the equality checks) on a machine too loaded to time anything.
"""
from __future__ import annotations

import os

import pytest
import torch

from bench.allocation import (
    draws,
    filled,
    full_table_knapsack,
    reference_knapsack,
    reference_variance,
    sorted_water_fill,
    time_allocate,
)
from dynamo_cli.allocation.knapsack import knapsack_rollouts
from dynamo_cli.allocation.maths import exploration_need, largest_first, water_fill
from dynamo_cli.allocation.variance import VarianceAllocator

BOUND_S = 0.010  # allocate() of 4096 prompts from a pool of 10^6
REPEATS = 21  # fresh draws timed per batch, after two untimed ones
REFERENCES = {"variance": reference_variance, "knapsack": reference_knapsack}


def test_largest_first_is_the_head_of_a_stable_descending_sort():
    # values [.5, 1, .5, -1, 1]: descending, ties to the lower index -> 1, 4, 0, 2, 3
    values = torch.tensor([0.5, 1.0, 0.5, -1.0, 1.0], dtype=torch.float64)
    assert [sorted(largest_first(values, k).tolist()) for k in range(6)] == [[], [1], [1, 4], [0, 1, 4], [0, 1, 2, 4],
                                                                             [0, 1, 2, 3, 4]]
    for trial in range(200):  # many ties: quarters and -1 (items at their cap)
        g = torch.Generator().manual_seed(trial)
        size = int(torch.randint(1, 40, (1,), generator=g))
        values = torch.randint(0, 5, (size,), generator=g).double() / 4
        values[torch.rand(size, generator=g) < 0.3] = -1.0
        for k in range(size + 1):
            assert set(largest_first(values, k).tolist()) == set(torch.sort(-values, stable=True).indices[:k].tolist())


def test_water_fill_hands_out_the_remainder_as_the_sort_did():
    for trial in range(100):
        g = torch.Generator().manual_seed(trial)
        size = int(torch.randint(1, 300, (1,), generator=g))
        weights = torch.randint(1, 4, (size,), generator=g).double()  # few distinct weights: ties in the remainders
        caps = torch.randint(0, 9, (size,), generator=g)
        budget = int(torch.randint(0, int(caps.sum()) + 1, (1,), generator=g))
        assert torch.equal(water_fill(weights=weights, caps=caps, budget=budget),
                           sorted_water_fill(weights=weights, caps=caps, budget=budget))


def test_exploration_need_is_the_ceiling():
    # integer, decayed (fractional) and beyond-g0 attempts: ceil(g0 - A)^+ by torch.ceil
    g = torch.Generator().manual_seed(0)
    attempts = torch.cat([torch.arange(0, 12, dtype=torch.float64), torch.rand(500, generator=g, dtype=torch.float64) * 12])
    for g0 in (0, 1, 4, 7):
        expected = (g0 - attempts).ceil().clamp(min=0).long()
        assert torch.equal(exploration_need(attempts=attempts, explore_min_attempts=g0), expected)


def rates(kind: str, size: int, g: torch.Generator) -> torch.Tensor:
    if kind == "spread":
        return torch.rand(size, generator=g, dtype=torch.float64) * 0.98 + 0.01
    if kind == "repeated":
        return (torch.randint(0, 5, (size,), generator=g).double() + 1) / 7
    if kind == "all_half":
        return torch.full((size,), 0.5, dtype=torch.float64)
    if kind == "hard":
        return 1 / (torch.randint(0, 10**5, (size,), generator=g).double() + 2)
    return (torch.randint(0, 40, (size,), generator=g).double() + 1) / 42  # deep: Laplace rates of 40 attempts


@pytest.mark.parametrize("kind", ["spread", "repeated", "all_half", "hard", "deep"])
def test_knapsack_rollouts_take_the_full_tables_largest_gains(kind):
    """Prefixes of the distinct rates' rows give what the whole (P, n_max - n_min) table sorted gives: rates all
    different, repeated (ties between prompts), all 0.5, tiny (hard prompts take up to n_max), and budgets so deep that
    the gains are down to rounding error."""
    g = torch.Generator().manual_seed(len(kind))
    for trial in range(150):
        size = int(torch.randint(1, 300, (1,), generator=g))
        rate = rates(kind, size, g)
        n_min = int(torch.randint(1, 5, (1,), generator=g))
        n_max = n_min + int(torch.randint(0, 120 if kind == "deep" else 70, (1,), generator=g))
        low = (n_min + n_max) // 2 if kind == "deep" else n_min
        budget = int(torch.randint(low * size - 5, n_max * size + 5, (1,), generator=g))
        assert torch.equal(knapsack_rollouts(rate=rate, budget=budget, n_min=n_min, n_max=n_max),
                           full_table_knapsack(rate=rate, budget=budget, n_min=n_min, n_max=n_max)), (kind, trial)


def allocator():
    return VarianceAllocator(n=4, n_min=1, n_max=8, explore_min_attempts=2, mastered_threshold=0.9, floor=0.01,
                             unexplored_priority=0.25, weight="std", decay=1.0, prior="tag", prior_strength=2.0)


def test_the_cached_lookup_follows_new_ids_mutated_lists_and_a_resume():
    a = allocator()
    ids, tags = ["a", "b", "c", "d"], ["L1", "L1", "L2", "L2"]
    assert a.history(ids)[1].tolist() == [0, 0, 0, 0]  # cached with every row unseen (-1) ...
    a.update(ids, successes=torch.tensor([1.0, 0, 2, 3]), attempts=torch.tensor([4.0, 4, 4, 4]), tags=tags)
    assert a.history(ids)[1].tolist() == [4, 4, 4, 4]  # ... and not served stale after update added them
    ids[0] = "e"  # the caller reuses its list: the cache holds a copy
    assert a.history(ids)[1].tolist() == [0, 4, 4, 4]
    a.update(["b", "e", "e"], successes=torch.tensor([1.0, 1, 0]), attempts=torch.tensor([2.0, 1, 1]), tags=["L1", "L3", "L3"])
    assert a.state_dict()["prompt_ids"] == ["a", "b", "c", "d", "e"]  # rows in order of first appearance, as before
    assert a.history(["e", "b", "zz"])[1].tolist() == [2, 6, 0]
    again = allocator()
    again.load_state_dict(a.state_dict())
    draw = ["c", "zz", "a", "e", "b"]
    first, second = a.allocate(draw, tags=["L2", "L1", "L1", "L3", "L1"]), again.allocate(draw, tags=["L2", "L1", "L1", "L3", "L1"])
    assert torch.equal(first.counts, second.counts) and torch.equal(first.priority, second.priority)


@pytest.mark.parametrize("name", ["variance", "knapsack"])
def test_allocate_4096_prompts_from_a_pool_of_a_million_within_10_ms(name):
    pool = 10**6
    allocator, ids, tags = filled(name, pool=pool, seed=0)
    batches = [draws(pool, prompts=4096, repeats=2 + REPEATS, seed=seed) for seed in (0, 1)]
    median, results = time_allocate(allocator, ids, tags, batches[0])
    for step_ids, _, allocation in results[:3]:  # the fast paths, at this size, against the textbook ones
        assert torch.equal(allocation.counts, REFERENCES[name](allocator, step_ids))
        assert int(allocation.counts.sum()) == 8 * 4096
    if os.environ.get("DYNAMO_SKIP_TIMING") == "1":
        return
    if median > BOUND_S:  # a burst of load from other processes on a shared machine: one more batch of fresh draws
        median = min(median, time_allocate(allocator, ids, tags, batches[1])[0])
    assert median <= BOUND_S, (f"allocator={name}: allocate() of 4096 prompts from a pool of 10^6 took a median "
                               f"{1e3 * median:.2f} ms over {REPEATS} fresh draws, twice (bound {1e3 * BOUND_S:.0f} ms; "
                               "DYNAMO_SKIP_TIMING=1 skips this on an overloaded machine)")
