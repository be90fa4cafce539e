import dataclasses
import inspect
import json
import math

import pytest
import torch

from dynamo_cli.allocation.base import ALLOCATORS
from dynamo_cli.allocation.maths import bernoulli_variance, exploration_need, uniform_rollouts, water_fill
from dynamo_cli.allocation.uniform import UniformAllocator, UniformAllocatorConfig
from dynamo_cli.allocation.variance import (
    VarianceAllocator,
    VarianceAllocatorConfig,
    allocate_rollouts,
    shrunk_estimates,
    sum_of_squares,
    tag_pool,
    variance_priority,
)
from dynamo_cli.config.base import ConfigError
from dynamo_cli.registry import parameters

# the paper's priority settings, written out because the hand values below depend on them
PAPER = dict(mastered_threshold=0.85, floor=0.01, unexplored_priority=0.25)


def t(*xs, dtype=torch.float64):
    return torch.tensor(xs, dtype=dtype)


def variance_allocator(n=4, **overrides):
    """Built as `dynamo train` builds it: every value not overridden is the schema's default."""
    return ALLOCATORS.build(VarianceAllocatorConfig(**{"n_min": 2, "n_max": 8, **overrides}), n=n)


def paper_priority(successes, attempts, weight="variance", g0=4):
    """prior=none: own estimates (m = 0), unexplored = G < g0 (undecayed here)."""
    zeros = torch.zeros_like(attempts)
    acc, variance = shrunk_estimates(successes=successes, attempts=attempts, prior_rate=zeros, prior_variance=zeros,
                                     prior_strength=zeros)
    return variance_priority(acc=acc, variance=variance, unknown=attempts < g0, weight=weight, **PAPER)


def test_bernoulli_variance_hand_values():
    # k (G - k) / (G (G - 1)):
    # G=0, G=1 -> 0 (too few samples); k=1,G=4 -> 1*3/(4*3) = 0.25; k=2,G=4 -> 2*2/12 = 1/3;
    # k=3,G=4 -> 3*1/12 = 0.25; decayed k=1.5,G=3 -> 1.5*1.5/(3*2) = 0.375; k=0,G=8 -> 0
    got = bernoulli_variance(successes=t(0, 1, 1, 2, 3, 1.5, 0), attempts=t(0, 1, 4, 4, 4, 3, 8))
    torch.testing.assert_close(got, t(0, 0, 0.25, 1 / 3, 0.25, 0.375, 0))


def test_sum_of_squares_hand_values():
    # SS = k (G - k) / G, dof = G - 1, both 0 where G < 2:
    # (1, 4): 1*3/4 = .75, 3 -> SS/dof = .25 = bernoulli_variance;  (2, 4): 2*2/4 = 1, 3 -> 1/3
    # (1, 1): 0, 0;  decayed (.75, 1.5): G < 2 -> 0, 0;  (0, 8): 0, 7
    ss, dof = sum_of_squares(successes=t(1, 2, 1, 0.75, 0), attempts=t(4, 4, 1, 1.5, 8))
    torch.testing.assert_close(ss, t(0.75, 1, 0, 0, 0))
    torch.testing.assert_close(dof, t(3, 3, 0, 0, 7))


def test_tag_pool_hand_values():
    # tag 0: (1, 4), (2, 4)  -> rate 3/8 = .375, variance (.75 + 1) / (3 + 3) = 7/24
    # tag 1: (0, 8), (8, 8)  -> rate 8/16 = .5 but variance (0 + 0) / (7 + 7) = 0: each prompt is certain
    # tag 2: (1, 1)          -> rate 1, no dof -> no evidence
    # untagged (3, 4) is left out of every pool
    pool = tag_pool(successes=t(1, 2, 0, 8, 1, 3), attempts=t(4, 4, 8, 8, 1, 4),
                    tag_ids=t(0, 0, 1, 1, 2, -1, dtype=torch.long), num_tags=3)
    torch.testing.assert_close(pool.rate, t(0.375, 0.5, 1.0))
    torch.testing.assert_close(pool.variance, t(7 / 24, 0, 0))
    assert pool.has_evidence.tolist() == [True, True, False]


@pytest.mark.parametrize("seed", range(5))
def test_tag_pool_matches_a_loop(seed):
    g = torch.Generator().manual_seed(seed)
    attempts = torch.rand(30, generator=g, dtype=torch.float64) * 10
    successes = attempts * torch.rand(30, generator=g, dtype=torch.float64)
    tags = torch.randint(-1, 4, (30,), generator=g)
    pool = tag_pool(successes=successes, attempts=attempts, tag_ids=tags, num_tags=4)
    for tag in range(4):
        rows = [i for i in range(30) if tags[i] == tag]
        k, n = sum(float(successes[i]) for i in rows), sum(float(attempts[i]) for i in rows)
        ss = sum(float(successes[i] * (attempts[i] - successes[i]) / attempts[i]) for i in rows if attempts[i] >= 2)
        dof = sum(float(attempts[i] - 1) for i in rows if attempts[i] >= 2)
        assert pool.rate[tag] == pytest.approx(k / n if n else 0)
        assert pool.variance[tag] == pytest.approx(ss / dof if dof else 0)
        assert bool(pool.has_evidence[tag]) == (dof > 0)


def test_shrunk_estimates_hand_values():
    # m = 4 pseudo-observations of a tag with p_tag = .375, V_tag = 7/24:
    # G=0:       acc = 4*.375/4 = .375;          P = (0 + 4*7/24)/(0 + 4) = 7/24      (the tag's own variance)
    # k=3, G=4:  acc = (3 + 1.5)/(4 + 4) = .5625; P = (.75 + 7/6)/(3 + 4) = 23/84
    # k=0, G=40: acc = 1.5/44;                   P = (0 + 7/6)/(39 + 4) = 7/258      (own evidence dominates)
    four = t(4, 4, 4)
    acc, var = shrunk_estimates(successes=t(0, 3, 0), attempts=t(0, 4, 40), prior_rate=four * 0.375 / 4,
                                prior_variance=four * 7 / 96, prior_strength=four)
    torch.testing.assert_close(acc, t(0.375, 0.5625, 1.5 / 44))
    torch.testing.assert_close(var, t(7 / 24, 23 / 84, 7 / 258))
    # m = 0 is the paper: (2, 4) -> .5, 1/3; below G = 2 the plug-in acc (1 - acc): (1, 1) -> 1, 0;
    # decayed (.75, 1.5) -> .5, .25; (0, 0) -> 0, 0
    zeros = torch.zeros(4, dtype=torch.float64)
    acc, var = shrunk_estimates(successes=t(2, 1, 0.75, 0), attempts=t(4, 1, 1.5, 0), prior_rate=zeros,
                                prior_variance=zeros, prior_strength=zeros)
    torch.testing.assert_close(acc, t(0.5, 1, 0.5, 0))
    torch.testing.assert_close(var, t(1 / 3, 0, 0.25, 0))


def test_variance_priority_hand_values():
    # (k, G):  (0,0) and (1,3): G < g0=4 -> unexplored -> 0.25
    #          (2,4): acc .5, P = 1/3, + 1e-6 * .5
    #          (0,8): never solved, P = 0 + 1e-6 -> floor 0.01
    #          (7,8): acc .875 >= .85 -> mastered -> floor 0.01
    #          (6,8): acc .75, P = 6*2/(8*7) = 3/14, + 1e-6 * .25
    successes, attempts = t(0, 1, 2, 0, 7, 6), t(0, 3, 4, 8, 8, 8)
    priority = paper_priority(successes, attempts)
    expected = t(0.25, 0.25, 1 / 3 + 0.5e-6, 0.01, 0.01, 3 / 14 + 0.25e-6)
    torch.testing.assert_close(priority, expected, rtol=0, atol=1e-12)
    # weight="std": sqrt of the variances *before* the floor, so the floor stays the smallest weight:
    # unexplored sqrt(.25) = .5; (0,8): sqrt(1e-6) = .001 -> floor .01 (not sqrt(.01) = .1); mastered .01
    std = paper_priority(successes, attempts, weight="std")
    torch.testing.assert_close(std, t(0.5, 0.5, (1 / 3 + 0.5e-6) ** 0.5, 0.01, 0.01, (3 / 14 + 0.25e-6) ** 0.5),
                               rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="weight"):
        paper_priority(successes, attempts, weight="sigma")


def test_exploration_need_counts_existing_attempts():
    # g0 = 4: A = 0 -> 4; A = 3 -> 1 (not 4); decayed-looking 3.5 -> ceil(.5) = 1; A = 4 or 9 -> 0
    got = exploration_need(attempts=t(0, 3, 3.5, 4, 9), explore_min_attempts=4)
    assert got.tolist() == [4, 1, 1, 0, 0]


def test_water_fill_hand_value():
    # weights 1,2,3, caps 10,1,10, budget 7: item 1 saturates at 1 (level 1/2); the other 6 units split 1:3
    # -> 1.5, 4.5 -> floors 1, 4 (sum 6 with item 1) -> one unit left, remainders .5 = .5 tie -> lower index
    got = water_fill(weights=t(1, 2, 3), caps=t(10, 1, 10, dtype=torch.long), budget=7)
    assert got.tolist() == [2, 1, 4]


def test_water_fill_edges():
    caps = t(3, 0, 2, dtype=torch.long)
    assert water_fill(weights=t(1, 0, 1), caps=caps, budget=0).tolist() == [0, 0, 0]
    assert water_fill(weights=t(1, 0, 1), caps=caps, budget=5).tolist() == [3, 0, 2]  # budget == sum(caps)
    with pytest.raises(ValueError, match="budget"):
        water_fill(weights=t(1, 0, 1), caps=caps, budget=6)
    with pytest.raises(ValueError, match="weights"):
        water_fill(weights=t(1, 0, 1), caps=t(1, 1, 1, dtype=torch.long), budget=1)


def slow_water_fill(weights, caps, budget):
    """Textbook loop: share ∝ w among unsaturated items, saturate the ones over their cap, repeat;
    then floor and one unit each by largest remainder (ties -> lower index)."""
    w, caps = weights.tolist(), caps.tolist()
    x = [0.0] * len(w)
    active, left = [i for i in range(len(w)) if caps[i] > 0], float(budget)
    while active:
        lam = left / sum(w[i] for i in active)
        full = [i for i in active if lam * w[i] >= caps[i]]
        if not full:
            for i in active:
                x[i] = lam * w[i]
            break
        for i in full:
            x[i], left = caps[i], left - caps[i]
            active.remove(i)
    units = [math.floor(v) for v in x]
    order = sorted(range(len(w)), key=lambda i: (-(x[i] - units[i]), i))
    for i in order[: budget - sum(units)]:
        units[i] += 1
    return units


@pytest.mark.parametrize("seed", range(20))
def test_water_fill_matches_slow_loop(seed):
    g = torch.Generator().manual_seed(seed)
    size = int(torch.randint(1, 40, (1,), generator=g))
    weights = torch.rand(size, generator=g, dtype=torch.float64) + 0.01
    caps = torch.randint(0, 12, (size,), generator=g)
    budget = int(torch.randint(0, int(caps.sum()) + 1, (1,), generator=g))
    got = water_fill(weights=weights, caps=caps, budget=budget)
    assert got.tolist() == slow_water_fill(weights, caps, budget)
    assert int(got.sum()) == budget and bool((got <= caps).all()) and bool((got >= 0).all())


def need(*xs):
    return torch.tensor(xs, dtype=torch.long)


def test_allocate_hand_value_water_filling():
    # P=3, n_min=1, n_max=5, budget 9, priority 1:2:5. (1) [1,1,1], 6 left, caps 4 each.
    # (3) lambda * 8 = 6 -> lambda = .75 (< 4/5 so nobody saturates): x = .75, 1.5, 3.75 -> floors 0,1,3 (4);
    # 2 units left by remainder .75, .75 (items 0, 2) -> +[1,1,4] -> [2, 2, 5]
    got = allocate_rollouts(priority=t(1, 2, 5), explore_need=need(0, 0, 0), budget=9, n_min=1, n_max=5)
    assert got.tolist() == [2, 2, 5]


def test_unexplored_first_under_tight_budget():
    # P=4, n_min=2, n_max=8, prompts 0 and 2 need 4 attempts (2 beyond n_min each), explored ones have
    # the higher priority .3.
    kw = dict(priority=t(0.25, 0.3, 0.25, 0.3), explore_need=need(4, 0, 4, 0), n_min=2, n_max=8)
    # budget 10: (1) [2,2,2,2], 2 left < need 4 -> shared ∝ need (1 each) -> [3,2,3,2]; explored get nothing
    assert allocate_rollouts(**kw, budget=10).tolist() == [3, 2, 3, 2]
    # budget 12: need covered exactly -> [4,2,4,2]
    assert allocate_rollouts(**kw, budget=12).tolist() == [4, 2, 4, 2]
    # budget 16: [4,2,4,2] + 4 units ∝ (.25,.3,.25,.3): lambda = 4/1.1, x = .909, 1.091, .909, 1.091 ->
    # floors 0,1,0,1, 2 units to remainders .909 (items 0, 2) -> +[1,1,1,1] -> [5,3,5,3]
    assert allocate_rollouts(**kw, budget=16).tolist() == [5, 3, 5, 3]


def test_exploration_shared_in_proportion_to_need():
    # n_min=1, need 4 but n_max=3 caps it at 3, i.e. 2 beyond n_min each; 1 unit left: .5/.5 tie -> lower index
    got = allocate_rollouts(priority=t(1, 1, 1), explore_need=need(0, 4, 4), budget=4, n_min=1, n_max=3)
    assert got.tolist() == [1, 2, 1]


def test_exploration_top_up_counts_only_what_is_missing():
    # n_min=1, n_max=8, budget 9, priorities equal. Needs 4, 1, 0: beyond n_min 3, 0, 0 -> (1)+(2) = [4,1,1],
    # 3 left ∝ 1:1:1 -> [5,2,2]. Ignoring the 3 attempts prompt 1 has, it would get the same top-up as prompt 0.
    got = allocate_rollouts(priority=t(1, 1, 1), explore_need=need(4, 1, 0), budget=9, n_min=1, n_max=8)
    assert got.tolist() == [5, 2, 2]


def test_equal_priorities_all_mastered_all_unsolved_are_uniform():
    for priority in (t(0.2, 0.2, 0.2, 0.2), t(0.01, 0.01, 0.01, 0.01)):
        got = allocate_rollouts(priority=priority, explore_need=need(0, 0, 0, 0), budget=64, n_min=8, n_max=24)
        assert got.tolist() == [16, 16, 16, 16]
    for k in (8.0, 0.0):  # all mastered (8/8), all unsolved (0/8): every priority is the floor
        alloc = variance_allocator(n=16, n_min=8, n_max=24)
        ids = ["a", "b", "c"]
        alloc.update(ids, successes=torch.full((3,), k), attempts=torch.full((3,), 8.0))
        assert alloc.allocate(ids).counts.tolist() == [16, 16, 16]


def test_budget_clipped_to_its_min_and_max():
    kw = dict(priority=t(0.01, 0.3, 0.25), explore_need=need(0, 0, 4), n_min=2, n_max=6)
    assert allocate_rollouts(**kw, budget=6).tolist() == [2, 2, 2]  # n_min * P
    assert allocate_rollouts(**kw, budget=1).tolist() == [2, 2, 2]  # clipped up
    assert allocate_rollouts(**kw, budget=18).tolist() == [6, 6, 6]  # n_max * P
    assert allocate_rollouts(**kw, budget=99).tolist() == [6, 6, 6]  # clipped down


def test_one_prompt():
    kw = dict(priority=t(0.3), explore_need=need(8), n_min=8, n_max=24)
    assert allocate_rollouts(**kw, budget=16).tolist() == [16]
    assert allocate_rollouts(**kw, budget=100).tolist() == [24]


@pytest.mark.parametrize("seed", range(10))
def test_random_exact_budget_bounds_and_monotonic(seed):
    g = torch.Generator().manual_seed(seed)
    size = 50
    priority = torch.rand(size, generator=g, dtype=torch.float64) * 0.3 + 0.01
    unexplored = torch.rand(size, generator=g) < 0.3
    budget = int(torch.randint(4 * size, 12 * size, (1,), generator=g))
    got = allocate_rollouts(priority=priority, explore_need=unexplored.long() * 6, budget=budget, n_min=4, n_max=12)
    assert int(got.sum()) == budget
    assert bool((got >= 4).all() and (got <= 12).all())
    # more variance never means fewer rollouts (among explored prompts, which all start the fill at n_min)
    by_priority = got[~unexplored][torch.argsort(priority[~unexplored])]
    assert bool((by_priority[1:] >= by_priority[:-1]).all())


def test_uniform_rollouts_and_allocator():
    assert uniform_rollouts(3, 5).tolist() == [5, 5, 5]
    allocator = ALLOCATORS.build(UniformAllocatorConfig(), n=4)
    alloc = allocator.allocate(["a", "b"])
    assert alloc.counts.tolist() == [4, 4] and alloc.priority.tolist() == [1.0, 1.0]
    assert alloc.metrics["alloc/budget"] == 8.0 and alloc.metrics["alloc/std"] == 0.0 and alloc.metrics["alloc/cv"] == 0.0
    # GRPO reports coverage too: g0 = 4 (the schema's default); a has 4 attempts, b 3 -> 1/2
    allocator.update(["a", "b"], successes=t(1, 1), attempts=t(4, 3))
    assert allocator.allocate(["a", "b"]).metrics["alloc/history_coverage"] == 0.5


def test_variance_allocator_hand_value():
    # n=4, n_min=2, n_max=8, budget 16, g0=4.
    # new: unexplored -> .25; hard 0/8 -> floor .01; easy 8/8 -> mastered .01; mid 4/8 -> 16/56 + 5e-7 = .2857148
    # (1) [2,2,2,2], 8 left; (2) new needs 4 -> +2 -> [4,2,2,2], 6 left;
    # (3) lambda = 6 / (.25+.01+.01+.2857148) = 10.797 -> x = 2.699, .108, .108, 3.085 -> floors 2,0,0,3 (5);
    #     1 unit to the largest remainder .699 (new) -> +[3,0,0,3] -> [7, 2, 2, 5]
    alloc = variance_allocator()
    alloc.update(["hard", "easy", "mid"], successes=t(0, 8, 4), attempts=t(8, 8, 8))
    got = alloc.allocate(["new", "hard", "easy", "mid"])
    assert got.counts.tolist() == [7, 2, 2, 5]
    torch.testing.assert_close(got.priority, t(0.25, 0.01, 0.01, 16 / 56 + 5e-7), rtol=0, atol=1e-12)
    assert got.metrics["alloc/unexplored_frac"] == 0.25 and got.metrics["alloc/mastered_frac"] == 0.25
    assert got.metrics["alloc/history_coverage"] == 0.75 and got.metrics["alloc/prior_weight"] == 0
    assert got.metrics["alloc/min"] == 2 and got.metrics["alloc/max"] == 7 and got.metrics["alloc/budget"] == 16
    # spread: counts 7,2,2,5, mean 4, std sqrt((9+4+4+1)/4) = sqrt(4.5) -> cv = sqrt(4.5)/4 = .5303
    assert got.metrics["alloc/cv"] == pytest.approx(4.5**0.5 / 4)


def test_partly_explored_prompt_is_topped_up_only_by_what_it_lacks():
    # n=4, n_min=1, n_max=8, budget 16, g0=4. "three" has 3 attempts (1 success): it needs 1 more, which
    # n_min already gives. new -> need 4 -> +3. (1)+(2) = [4, 1, 1, 1], 12 - 3 = 9 left.
    # priorities: new .25, three .25 (unexplored, prior=none), mid 4/8 -> 2/7 + 5e-7, hard 0/8 -> .01 (sum .795715)
    # (3) lambda = 9/.795715 = 11.3106: x = 2.828, 2.828, 3.232, .113 -> floors 2, 2, 3, 0 (7);
    #     2 units to remainders .828, .828 (new, three) -> +[3, 3, 3, 0] -> [7, 4, 4, 1]
    alloc = variance_allocator(n_min=1)
    alloc.update(["three", "mid", "hard"], successes=t(1, 4, 0), attempts=t(3, 8, 8))
    assert alloc.allocate(["new", "three", "mid", "hard"]).counts.tolist() == [7, 4, 4, 1]


def test_history_and_decay():
    alloc = ALLOCATORS.build(UniformAllocatorConfig(), n=4)
    alloc.update(["a", "b"], successes=t(1, 2), attempts=t(4, 4))
    alloc.update(["a", "a"], successes=t(3, 1), attempts=t(4, 4))  # duplicates accumulate
    s, g = alloc.history(["a", "b", "unseen"])
    assert s.tolist() == [5, 2, 0] and g.tolist() == [12, 4, 0]

    # decay .5 per update, applied to ALL stored prompts before adding this step's counts:
    # a: (1, 4) -> (.5 + 3, 2 + 4) = (3.5, 6); then b is updated: a -> (1.75, 3), b = (2, 4)
    alloc = variance_allocator(decay=0.5)
    alloc.update(["a"], successes=t(1), attempts=t(4))
    alloc.update(["a"], successes=t(3), attempts=t(4))
    assert [x.tolist() for x in alloc.history(["a"])] == [[3.5], [6.0]]
    alloc.update(["b"], successes=t(2), attempts=t(4))
    assert [x.tolist() for x in alloc.history(["a", "b"])] == [[1.75, 2.0], [3.0, 4.0]]
    # a's 3 decayed attempts are below g0 = 4, but its 8 undecayed ones are not: it stays explored
    assert alloc.allocate(["a", "b"]).metrics["alloc/unexplored_frac"] == 0.0
    with pytest.raises(ValueError):
        alloc.update(["a"], successes=t(5), attempts=t(4))


def test_decay_never_turns_a_mastered_prompt_into_an_unexplored_one():
    # decay .5: "m" solved 8/8 once, then 3 more steps update only "x" -> m decays to (1, 1): G < g0 and even
    # G < 2, but 8 undecayed attempts >= g0 -> explored; acc = 1/1 >= .85 -> mastered -> floor .01, not .25.
    # x: 12 undecayed attempts; decayed 3 + (3 + 3*.5) * .5 ... = (1.75, 7), acc .25, P = 1.75*5.25/(7*6) = .21875
    alloc = variance_allocator(decay=0.5)
    alloc.update(["m"], successes=t(8), attempts=t(8))
    for _ in range(3):
        alloc.update(["x"], successes=t(1), attempts=t(4))
    assert [v.tolist() for v in alloc.history(["m", "x"])] == [[1.0, 1.75], [1.0, 7.0]]
    got = alloc.allocate(["m", "x"])
    torch.testing.assert_close(got.priority, t(0.01, 0.21875 + 0.75e-6), rtol=0, atol=1e-12)
    assert got.metrics["alloc/history_coverage"] == 1.0 and got.metrics["alloc/mastered_frac"] == 0.5


def tagged_allocator(**overrides):
    # L1: 8/8, 7/8 -> p = 15/16 = .9375, V = (0 + 7*1/8) / (7 + 7) = .0625
    # L4: 4/8, 2/8 -> p = 6/16 = .375,   V = (4*4/8 + 2*6/8) / (7 + 7) = 3.5/14 = .25
    alloc = variance_allocator(n=6, prior="tag", prior_strength=4.0, **overrides)
    alloc.update(["e1", "e2", "h1", "h2"], successes=t(8, 7, 4, 2), attempts=t(8, 8, 8, 8), tags=["L1", "L1", "L4", "L4"])
    return alloc


def test_tag_prior_hand_value():
    # n=6, n_min=2, n_max=8, m=4, g0=4; three new prompts of tags L1, L4 and an unseen L9:
    # newL1: acc = 4*.9375/4 = .9375 >= .85 -> mastered -> floor .01
    # newL4: acc = .375, P = (0 + 4*.25)/(0 + 4) = .25 -> .25 + 1e-6*.625
    # newL9: its tag has no evidence -> nothing borrowed -> unexplored_priority .25
    # (1)+(2): all need 4 -> [4,4,4], 18 - 12 = 6 left; (3) lambda = 6/.510000625 = 11.7647:
    # x = .118, 2.941, 2.941 -> floors 0, 2, 2; 2 units to remainders .941 (L4, L9) -> [4, 7, 7]
    # (prior=none: all three .25 -> [6, 6, 6])
    alloc = tagged_allocator()
    got = alloc.allocate(["newL1", "newL4", "newL9"], tags=["L1", "L4", "L9"])
    torch.testing.assert_close(got.priority, t(0.01, 0.25 + 0.625e-6, 0.25), rtol=0, atol=1e-12)
    assert got.counts.tolist() == [4, 7, 7]
    # prior weight m/(G + m): 1, 1, 0 -> mean 2/3; nothing has g0 attempts yet -> coverage 0
    assert got.metrics["alloc/prior_weight"] == pytest.approx(2 / 3) and got.metrics["alloc/history_coverage"] == 0
    # an explored prompt is shrunk toward the *other* prompts of its tag (its own evidence is in the pool: counted there
    # too, it would enter twice). h1 (4/8, L4) borrows from h2 alone: p = 2/8, V = (2*6/8)/7 = 1.5/7, so
    # acc = (4 + 4*.25)/(8 + 4) = 5/12, P = (2 + 4*1.5/7)/(7 + 4) = 20/77 (with itself in the pool: 11/24 and 3/11);
    # e1 (8/8, L1) borrows from e2 (7/8): acc = (8 + 4*7/8)/12 = .958 -> mastered -> floor
    got = alloc.allocate(["h1", "e1"], tags=["L4", "L1"])
    torch.testing.assert_close(got.priority, t(20 / 77 + 1e-6 * 7 / 12, 0.01), rtol=0, atol=1e-12)
    # a tag of one stored prompt lends it nothing: its prior would be its own rate
    alone = variance_allocator(n=6, prior="tag", prior_strength=4.0)
    alone.update(["solo"], successes=t(3), attempts=t(8), tags=["L2"])
    assert alone.allocate(["solo"], tags=["L2"]).metrics["alloc/prior_weight"] == 0.0
    # without tags a prior cannot be formed: an error, not a silent prior=none
    with pytest.raises(ValueError, match="tags"):
        alloc.allocate(["h1"])
    with pytest.raises(ValueError, match="tags"):
        alloc.update(["h1"], successes=t(1), attempts=t(2))


def test_tag_prior_pools_decayed_statistics():
    # decay .5, then one more update of h1 (2/4): every stored row is halved first.
    # L4 now: h1 (2 + 2, 4 + 4) = (4, 8), h2 (1, 4): p = 5/12; SS = 4*4/8 + 1*3/4 = 2.75, dof 7 + 3 = 10 -> V = .275
    # new L4 prompt: acc = 5/12, P = 4*.275/4 = .275
    alloc = tagged_allocator(decay=0.5)
    alloc.update(["h1"], successes=t(2), attempts=t(4), tags=["L4"])
    got = alloc.allocate(["newL4"], tags=["L4"])
    torch.testing.assert_close(got.priority, t(0.275 + 1e-6 * 7 / 12), rtol=0, atol=1e-12)


@pytest.mark.parametrize("prior", ["none", "tag"])
def test_state_dict_round_trip(prior):
    alloc = variance_allocator(prior=prior, decay=0.9)
    alloc.update(["p1", "p2", "p3"], successes=t(1, 4, 0), attempts=t(8, 8, 2), tags=["L1", "L2", "L1"])
    alloc.update(["p3"], successes=t(1), attempts=t(2), tags=["L1"])
    state = json.loads(json.dumps(alloc.state_dict()))  # plain python types
    fresh = variance_allocator(prior=prior, decay=0.9)
    fresh.load_state_dict(state)
    ids, tags = ["p3", "p1", "p2", "p4"], ["L1", "L1", "L2", "L2"]
    assert [x.tolist() for x in fresh.history(ids)] == [x.tolist() for x in alloc.history(ids)]
    a, b = fresh.allocate(ids, tags=tags), alloc.allocate(ids, tags=tags)
    assert a.counts.tolist() == b.counts.tolist() and a.priority.tolist() == b.priority.tolist()
    assert a.metrics == b.metrics
    fresh.update(["p4"], successes=t(1), attempts=t(1), tags=["L2"])  # keeps working after a load
    assert fresh.history(["p4", "p1"])[1].tolist() == pytest.approx([1.0, 8.0 * 0.9**2])  # p1 decayed twice since


def test_state_from_an_older_checkpoint_loads():
    # written before undecayed counts and tags were kept: undecayed := decayed (exact for decay = 1), untagged
    alloc = variance_allocator()
    alloc.load_state_dict({"prompt_ids": ["a", "b"], "successes": [1.0, 4.0], "attempts": [3.0, 8.0]})
    got = alloc.allocate(["a", "b"])
    assert got.metrics["alloc/history_coverage"] == 0.5 and alloc.state_dict()["tag_of"] == [-1, -1]


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        (dict(n_min=0), "allocator.n_min=0"),
        (dict(decay=0.0), "allocator.decay=0.0"),
        (dict(weight="sigma"), "allocator.weight='sigma'"),
        (dict(floor=0.0), "allocator.floor=0.0"),
        (dict(mastered_threshold=1.5), "allocator.mastered_threshold=1.5"),
        (dict(prior="level"), "allocator.prior='level' is not allowed; choose one of: none, tag"),
        (dict(prior_strength=0.0), "allocator.prior_strength=0.0 must be > 0"),
    ],
)
def test_checks_live_in_the_schema(kwargs, bad):
    with pytest.raises(ConfigError, match=bad.replace("(", r"\(").replace(")", r"\)")):
        VarianceAllocatorConfig(**kwargs)


@pytest.mark.parametrize("name", ALLOCATORS.names())
def test_each_allocator_takes_its_schemas_fields_and_n(name):
    """ALLOCATORS.build passes a class the schema fields its __init__ names, and n: a parameter named otherwise would
    be left to a default the schema never sees."""
    fields = {f.name for f in dataclasses.fields(ALLOCATORS.schema(name))} - {"name"}
    assert parameters(dict(ALLOCATORS.items())[name]) == fields | {"n"}


@pytest.mark.parametrize("fn", [UniformAllocator.__init__, VarianceAllocator.__init__, variance_priority,
                                allocate_rollouts, shrunk_estimates, exploration_need])
def test_no_hyperparameter_default_outside_the_schema(fn):
    assert all(p.default is inspect.Parameter.empty for p in inspect.signature(fn).parameters.values())


@pytest.mark.parametrize("prior", ["none", "tag"])
def test_large_allocation_is_exact(prior):
    """10^5 prompts: exact budget and bounds (its speed is measured by `make bench`, not asserted here)."""
    size = 100_000
    g = torch.Generator().manual_seed(0)
    ids, tags = [f"q{i}" for i in range(size)], [f"L{i % 6}" for i in range(size)]
    alloc = variance_allocator(n=16, n_min=8, n_max=24, prior=prior)
    attempts = torch.randint(0, 40, (size,), generator=g).double()
    successes = (attempts * torch.rand(size, generator=g, dtype=torch.float64)).floor()
    alloc.update(ids, successes=successes, attempts=attempts, tags=tags)
    counts = alloc.allocate(ids, tags=tags).counts
    assert int(counts.sum()) == 16 * size and int(counts.min()) >= 8 and int(counts.max()) <= 24
