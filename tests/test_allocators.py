import json
import math

import pytest
import torch

from dynamo_cli.allocators import (
    UniformAllocator,
    VarianceAllocator,
    allocate_rollouts,
    bernoulli_variance,
    uniform_rollouts,
    variance_priority,
    water_fill,
)


def t(*xs, dtype=torch.float64):
    return torch.tensor(xs, dtype=dtype)


def test_bernoulli_variance_hand_values():
    # k (G - k) / (G (G - 1)):
    # G=0, G=1 -> 0 (too few samples); k=1,G=4 -> 1*3/(4*3) = 0.25; k=2,G=4 -> 2*2/12 = 1/3;
    # k=3,G=4 -> 3*1/12 = 0.25; decayed k=1.5,G=3 -> 1.5*1.5/(3*2) = 0.375; k=0,G=8 -> 0
    got = bernoulli_variance(successes=t(0, 1, 1, 2, 3, 1.5, 0), attempts=t(0, 1, 4, 4, 4, 3, 8))
    torch.testing.assert_close(got, t(0, 0, 0.25, 1 / 3, 0.25, 0.375, 0))


def test_variance_priority_hand_values():
    # (k, G):  (0,0) and (1,3): G < g0=4 -> unexplored -> 0.25
    #          (2,4): acc .5, P = 1/3, + 1e-6 * .5
    #          (0,8): never solved, P = 0 + 1e-6 -> floor 0.01
    #          (7,8): acc .875 >= .85 -> mastered -> floor 0.01
    #          (6,8): acc .75, P = 6*2/(8*7) = 3/14, + 1e-6 * .25
    successes, attempts = t(0, 1, 2, 0, 7, 6), t(0, 3, 4, 8, 8, 8)
    priority, unexplored = variance_priority(successes=successes, attempts=attempts)
    expected = t(0.25, 0.25, 1 / 3 + 0.5e-6, 0.01, 0.01, 3 / 14 + 0.25e-6)
    torch.testing.assert_close(priority, expected, rtol=0, atol=1e-12)
    assert unexplored.tolist() == [True, True, False, False, False, False]
    # weight="std": sqrt of the final priority, floor and unexplored values included
    std, _ = variance_priority(successes=successes, attempts=attempts, weight="std")
    torch.testing.assert_close(std, expected.sqrt(), rtol=0, atol=1e-12)
    assert std[0] == 0.5 and std[3] == 0.1
    with pytest.raises(ValueError, match="weight"):
        variance_priority(successes=successes, attempts=attempts, weight="sigma")


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


def test_allocate_hand_value_water_filling():
    # P=3, n_min=1, n_max=5, budget 9, priority 1:2:5. (1) [1,1,1], 6 left, caps 4 each.
    # (3) lambda * 8 = 6 -> lambda = .75 (< 4/5 so nobody saturates): x = .75, 1.5, 3.75 -> floors 0,1,3 (4);
    # 2 units left by remainder .75, .75 (items 0, 2) -> +[1,1,4] -> [2, 2, 5]
    got = allocate_rollouts(
        priority=t(1, 2, 5), unexplored=torch.zeros(3, dtype=torch.bool), budget=9, n_min=1, n_max=5, explore_target=1
    )
    assert got.tolist() == [2, 2, 5]


def test_unexplored_first_under_tight_budget():
    # P=4, n_min=2, n_max=8, explore_target=4, prompts 0 and 2 unexplored (need 2 each), explored ones have
    # the higher priority .3.
    kw = dict(priority=t(0.25, 0.3, 0.25, 0.3), unexplored=torch.tensor([1, 0, 1, 0]).bool(), n_min=2, n_max=8)
    # budget 10: (1) [2,2,2,2], 2 left < need 4 -> shared ∝ need (1 each) -> [3,2,3,2]; explored get nothing
    assert allocate_rollouts(**kw, budget=10, explore_target=4).tolist() == [3, 2, 3, 2]
    # budget 12: need covered exactly -> [4,2,4,2]
    assert allocate_rollouts(**kw, budget=12, explore_target=4).tolist() == [4, 2, 4, 2]
    # budget 16: [4,2,4,2] + 4 units ∝ (.25,.3,.25,.3): lambda = 4/1.1, x = .909, 1.091, .909, 1.091 ->
    # floors 0,1,0,1, 2 units to remainders .909 (items 0, 2) -> +[1,1,1,1] -> [5,3,5,3]
    assert allocate_rollouts(**kw, budget=16, explore_target=4).tolist() == [5, 3, 5, 3]


def test_exploration_shared_in_proportion_to_need():
    # n_min=1, target 4 but n_max=3 caps the need at 2 each; 1 unit left: .5/.5 tie -> lower index
    got = allocate_rollouts(
        priority=t(1, 1, 1), unexplored=torch.tensor([0, 1, 1]).bool(), budget=4, n_min=1, n_max=3, explore_target=4
    )
    assert got.tolist() == [1, 2, 1]


def test_equal_priorities_all_mastered_all_unsolved_are_uniform():
    none = torch.zeros(4, dtype=torch.bool)
    for priority in (t(0.2, 0.2, 0.2, 0.2), t(0.01, 0.01, 0.01, 0.01)):
        got = allocate_rollouts(priority=priority, unexplored=none, budget=64, n_min=8, n_max=24, explore_target=8)
        assert got.tolist() == [16, 16, 16, 16]
    for k in (8.0, 0.0):  # all mastered (8/8), all unsolved (0/8): every priority is the floor
        alloc = VarianceAllocator(n=16, n_min=8, n_max=24)
        ids = ["a", "b", "c"]
        alloc.update(ids, successes=torch.full((3,), k), attempts=torch.full((3,), 8.0))
        assert alloc.allocate(ids).counts.tolist() == [16, 16, 16]


def test_budget_clipped_to_its_min_and_max():
    kw = dict(priority=t(0.01, 0.3, 0.25), unexplored=torch.tensor([0, 0, 1]).bool(), n_min=2, n_max=6)
    assert allocate_rollouts(**kw, budget=6, explore_target=4).tolist() == [2, 2, 2]  # n_min * P
    assert allocate_rollouts(**kw, budget=1, explore_target=4).tolist() == [2, 2, 2]  # clipped up
    assert allocate_rollouts(**kw, budget=18, explore_target=4).tolist() == [6, 6, 6]  # n_max * P
    assert allocate_rollouts(**kw, budget=99, explore_target=4).tolist() == [6, 6, 6]  # clipped down


def test_one_prompt():
    kw = dict(priority=t(0.3), unexplored=torch.tensor([True]), n_min=8, n_max=24, explore_target=8)
    assert allocate_rollouts(**kw, budget=16).tolist() == [16]
    assert allocate_rollouts(**kw, budget=100).tolist() == [24]


@pytest.mark.parametrize("seed", range(10))
def test_random_exact_budget_bounds_and_monotonic(seed):
    g = torch.Generator().manual_seed(seed)
    size = 50
    priority = torch.rand(size, generator=g, dtype=torch.float64) * 0.3 + 0.01
    unexplored = torch.rand(size, generator=g) < 0.3
    budget = int(torch.randint(4 * size, 12 * size, (1,), generator=g))
    got = allocate_rollouts(
        priority=priority, unexplored=unexplored, budget=budget, n_min=4, n_max=12, explore_target=6
    )
    assert int(got.sum()) == budget
    assert bool((got >= 4).all() and (got <= 12).all())
    # more variance never means fewer rollouts (among explored prompts, which all start the fill at n_min)
    by_priority = got[~unexplored][torch.argsort(priority[~unexplored])]
    assert bool((by_priority[1:] >= by_priority[:-1]).all())


def test_uniform_rollouts_and_allocator():
    assert uniform_rollouts(3, 5).tolist() == [5, 5, 5]
    alloc = UniformAllocator(n=4).allocate(["a", "b"])
    assert alloc.counts.tolist() == [4, 4] and alloc.priority.tolist() == [1.0, 1.0]
    assert alloc.metrics["alloc/budget"] == 8.0 and alloc.metrics["alloc/std"] == 0.0


def test_variance_allocator_hand_value():
    # n=4, n_min=2, n_max=8, budget 16, explore target max(2, 4) = 4.
    # new: unexplored -> .25; hard 0/8 -> floor .01; easy 8/8 -> mastered .01; mid 4/8 -> 16/56 + 5e-7 = .2857148
    # (1) [2,2,2,2], 8 left; (2) new +2 -> [4,2,2,2], 6 left;
    # (3) lambda = 6 / (.25+.01+.01+.2857148) = 10.797 -> x = 2.699, .108, .108, 3.085 -> floors 2,0,0,3 (5);
    #     1 unit to the largest remainder .699 (new) -> +[3,0,0,3] -> [7, 2, 2, 5]
    alloc = VarianceAllocator(n=4, n_min=2, n_max=8)
    alloc.update(["hard", "easy", "mid"], successes=t(0, 8, 4), attempts=t(8, 8, 8))
    got = alloc.allocate(["new", "hard", "easy", "mid"])
    assert got.counts.tolist() == [7, 2, 2, 5]
    torch.testing.assert_close(got.priority, t(0.25, 0.01, 0.01, 16 / 56 + 5e-7), rtol=0, atol=1e-12)
    assert got.metrics["alloc/unexplored_frac"] == 0.25 and got.metrics["alloc/mastered_frac"] == 0.25
    assert got.metrics["alloc/min"] == 2 and got.metrics["alloc/max"] == 7 and got.metrics["alloc/budget"] == 16


def test_history_and_decay():
    alloc = UniformAllocator(n=4)
    alloc.update(["a", "b"], successes=t(1, 2), attempts=t(4, 4))
    alloc.update(["a", "a"], successes=t(3, 1), attempts=t(4, 4))  # duplicates accumulate
    s, g = alloc.history(["a", "b", "unseen"])
    assert s.tolist() == [5, 2, 0] and g.tolist() == [12, 4, 0]

    # decay .5 per update, applied to ALL stored prompts before adding this step's counts:
    # a: (1, 4) -> (.5 + 3, 2 + 4) = (3.5, 6); then b is updated: a -> (1.75, 3), b = (2, 4)
    alloc = VarianceAllocator(n=4, n_min=2, n_max=8, decay=0.5)
    alloc.update(["a"], successes=t(1), attempts=t(4))
    alloc.update(["a"], successes=t(3), attempts=t(4))
    assert [x.tolist() for x in alloc.history(["a"])] == [[3.5], [6.0]]
    alloc.update(["b"], successes=t(2), attempts=t(4))
    assert [x.tolist() for x in alloc.history(["a", "b"])] == [[1.75, 2.0], [3.0, 4.0]]
    # a's 3 decayed attempts are below g0 = 4 again: it counts as unexplored
    assert alloc.allocate(["a", "b"]).metrics["alloc/unexplored_frac"] == 0.5
    with pytest.raises(ValueError):
        alloc.update(["a"], successes=t(5), attempts=t(4))


def test_state_dict_round_trip():
    alloc = VarianceAllocator(n=4, n_min=2, n_max=8)
    alloc.update(["p1", "p2", "p3"], successes=t(1, 4, 0), attempts=t(8, 8, 2))
    state = json.loads(json.dumps(alloc.state_dict()))  # plain python types
    fresh = VarianceAllocator(n=4, n_min=2, n_max=8)
    fresh.load_state_dict(state)
    ids = ["p3", "p1", "p2", "p4"]
    assert [x.tolist() for x in fresh.history(ids)] == [x.tolist() for x in alloc.history(ids)]
    assert fresh.allocate(ids).counts.tolist() == alloc.allocate(ids).counts.tolist()
    fresh.update(["p4"], successes=t(1), attempts=t(1))  # keeps working after a load
    assert fresh.history(["p4", "p1"])[1].tolist() == [1.0, 8.0]


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        (dict(n=4, n_min=0, n_max=8), "n_min"),
        (dict(n=10, n_min=2, n_max=8), "n_max=8"),
        (dict(n=1, n_min=2, n_max=8), "n=1"),
        (dict(n=4, n_min=2, n_max=8, decay=0.0), "decay"),
        (dict(n=4, n_min=2, n_max=8, weight="sigma"), "sigma"),
        (dict(n=4, n_min=2, n_max=8, floor=0.0), "floor"),
        (dict(n=4, n_min=2, n_max=8, mastered_threshold=1.5), "1.5"),
    ],
)
def test_constructor_validation(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        VarianceAllocator(**kwargs)


def test_large_allocation_is_exact():
    """10^5 prompts: exact budget and bounds (its speed is measured by `make bench`, not asserted here)."""
    size = 100_000
    g = torch.Generator().manual_seed(0)
    ids = [f"q{i}" for i in range(size)]
    alloc = VarianceAllocator(n=16, n_min=8, n_max=24)
    attempts = torch.randint(0, 40, (size,), generator=g).double()
    successes = (attempts * torch.rand(size, generator=g, dtype=torch.float64)).floor()
    alloc.update(ids, successes=successes, attempts=attempts)
    counts = alloc.allocate(ids).counts
    assert int(counts.sum()) == 16 * size and int(counts.min()) >= 8 and int(counts.max()) <= 24
