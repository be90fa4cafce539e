"""allocate() at scale: the O(P) remainder selection and the cached id lookup give the allocations and the
state they gave before (the sort they replace is the reference here)."""
from __future__ import annotations

import torch

from dynamo_cli.allocation.allocators import VarianceAllocator, largest_first, water_fill


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


def reference_water_fill(*, weights, caps, budget):
    """water_fill with its remainder handed out by a full stable sort (the implementation before largest_first)."""
    w, caps = weights.double(), caps.long()
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


def test_water_fill_hands_out_the_remainder_as_the_sort_did():
    for trial in range(100):
        g = torch.Generator().manual_seed(trial)
        size = int(torch.randint(1, 300, (1,), generator=g))
        weights = torch.randint(1, 4, (size,), generator=g).double()  # few distinct weights: ties in the remainders
        caps = torch.randint(0, 9, (size,), generator=g)
        budget = int(torch.randint(0, int(caps.sum()) + 1, (1,), generator=g))
        assert torch.equal(water_fill(weights=weights, caps=caps, budget=budget),
                           reference_water_fill(weights=weights, caps=caps, budget=budget))


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


def test_prompt_ids_with_pool_keys_allocate_as_plain_ids_do_and_survive_a_resume_and_a_new_pool():
    """PromptIds (ids + their pool positions, as collect passes them): the same rows, histories and allocations as
    the plain list, new prompts added through keys, the key cache rebuilt after load_state_dict, and a different
    pool never served another pool's rows."""
    from dynamo_cli.allocation.allocators import PromptIds

    pool = [f"p{i}" for i in range(12)]
    tags = [f"L{i % 3}" for i in range(12)]

    def keyed(indices, of=pool):
        return PromptIds([of[i] for i in indices], keys=torch.tensor(indices), pool=of)

    plain, fast = allocator(), allocator()
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        draw = torch.randperm(12, generator=g)[:5].tolist()
        attempts = torch.randint(1, 6, (5,), generator=g).double()
        successes = torch.binomial(attempts, torch.full((5,), 0.5, dtype=torch.float64), generator=g)
        step_tags = [tags[i] for i in draw]
        a, b = plain.allocate([pool[i] for i in draw], tags=step_tags), fast.allocate(keyed(draw), tags=step_tags)
        assert torch.equal(a.counts, b.counts) and torch.equal(a.priority, b.priority), step
        plain.update([pool[i] for i in draw], successes=successes, attempts=attempts, tags=step_tags)
        fast.update(keyed(draw), successes=successes, attempts=attempts, tags=step_tags)
    assert fast.state_dict() == plain.state_dict()
    everyone = list(range(12))
    assert torch.equal(fast.history(keyed(everyone))[1], plain.history(pool)[1])
    resumed = allocator()
    resumed.load_state_dict(fast.state_dict())  # no key cache in the state: rebuilt from the ids on first use
    assert torch.equal(resumed.history(keyed(everyone))[1], plain.history(pool)[1])
    other = [f"q{i}" for i in range(12)]  # another pool, same keys: its own ids, never p's rows
    assert resumed.history(keyed(everyone, of=other))[1].tolist() == [0.0] * 12
    assert torch.equal(resumed.history(keyed(everyone))[1], plain.history(pool)[1])
