"""Rollout-side allocators (DAPO's dynamic sampling, GRESO, Knapsack RL): pure functions against hand-worked
values, the round protocol without a model, then DAPO through the collect stage's rounds with a tiny model."""
from __future__ import annotations

import itertools

import pytest
import torch

from dynamo_cli.allocation.dapo import DapoAllocator, fresh_prompts_needed, informative_groups, keep_first
from dynamo_cli.allocation.greso import (
    GresoAllocator,
    adapt_explore_prob,
    counted_zero_variance,
    greso_skip,
    zero_variance_groups,
    zero_variance_streak,
)
from dynamo_cli.allocation.knapsack import KnapsackAllocator, knapsack_rollouts, knapsack_value
from dynamo_cli.protocols import RoundAllocator


# ------------------------------------------------------------------------------------------ DAPO
def test_informative_groups_need_two_rollouts_with_different_rewards():
    # group 0: [1, 1] equal; group 1: [0, 1] mixed; group 2: [0, 0] equal; group 3: one rollout; group 4: none
    rewards = torch.tensor([1.0, 1, 0, 1, 0, 0, 1])
    informative, generated = informative_groups(rewards=rewards, group_index=torch.tensor([0, 0, 1, 1, 2, 2, 3]), num_groups=5)
    assert informative.tolist() == [False, True, False, False, False]
    assert generated.tolist() == [True, True, True, True, False]


def test_keep_first_truncates_to_the_target_in_draw_order():
    informative = torch.tensor([True, False, True, True, True])
    assert keep_first(informative, target=2).tolist() == [True, False, True, False, False]
    assert keep_first(informative, target=9).tolist() == informative.tolist()  # short of the target: every informative one


def test_fresh_prompts_follow_the_informative_rate_and_are_bounded():
    # 3 of 8 informative, 5 missing: 5 · 8/3 = 13.3 -> 14, capped at the target 8
    assert fresh_prompts_needed(informative=3, generated=8, target=8) == 8
    # 6 of 8 informative, 2 missing: 2 · 8/6 = 2.67 -> 3
    assert fresh_prompts_needed(informative=6, generated=8, target=8) == 3
    assert fresh_prompts_needed(informative=0, generated=8, target=8) == 8  # nothing informative yet: a full round
    assert fresh_prompts_needed(informative=8, generated=8, target=8) == 0
    assert fresh_prompts_needed(informative=9, generated=12, target=8) == 0


def test_dapo_asks_for_fresh_prompts_then_keeps_the_informative_groups():
    dapo = DapoAllocator(n=2, max_rounds=5, on_max_rounds="train", explore_min_attempts=4, decay=1.0)
    assert isinstance(dapo, RoundAllocator)
    assert dapo.allocate(["a", "b"]).counts.tolist() == [2, 2]
    # round 1: a = [1, 1] (all equal), b = [0, 1]: 1 of the target 2 -> 1 · 2/1 = 2 fresh prompts, no more rollouts of a, b
    more = dapo.next_round(["a", "b"], rewards=torch.tensor([1.0, 1, 0, 1]), group_index=torch.tensor([0, 0, 1, 1]), round=1)
    assert more.fresh == 2 and more.counts.tolist() == [0, 0] and more.keep is None
    # round 2: c = [0, 1] informative, d = [0, 0] dropped: b and c fill the batch; a and d are dropped
    done = dapo.next_round(["a", "b", "c", "d"], rewards=torch.tensor([1.0, 1, 0, 1, 0, 1, 0, 0]),
                           group_index=torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), round=2)
    assert done.fresh == 0 and done.counts.tolist() == [0, 0, 0, 0]
    assert done.keep.tolist() == [False, True, True, False]
    assert done.metrics == {"alloc/informative_groups": 2.0, "alloc/kept_groups": 2.0, "alloc/dropped_groups": 2.0,
                            "alloc/fresh_prompts": 2.0, "alloc/spent_rollouts": 8.0}


def test_dapo_stops_at_max_rounds_with_what_it_has():
    dapo = DapoAllocator(n=2, max_rounds=1, on_max_rounds="train", explore_min_attempts=4, decay=1.0)
    done = dapo.next_round(["a", "b"], rewards=torch.tensor([1.0, 1, 0, 1]), group_index=torch.tensor([0, 0, 1, 1]), round=1)
    assert done.fresh == 0 and done.keep.tolist() == [False, True] and done.metrics["alloc/kept_groups"] == 1.0


def test_dapo_can_stop_the_run_as_verl_does_when_the_rounds_run_out():
    from dynamo_cli.errors import DynamoError

    dapo = DapoAllocator(n=2, max_rounds=1, on_max_rounds="stop", explore_min_attempts=4, decay=1.0)
    with pytest.raises(DynamoError, match=r"1 of 2 groups informative after allocator.max_rounds=1 rounds.*on_max_rounds=train"):
        dapo.next_round(["a", "b"], rewards=torch.tensor([1.0, 1, 0, 1]), group_index=torch.tensor([0, 0, 1, 1]), round=1)


# ----------------------------------------------------------------------------------------- GRESO
def test_greso_skip_probability_is_one_minus_p_explore_to_the_streak():
    # p_e = 0.5: rolled out with probability 1, 0.5, 0.25, 0.125 for streaks 0..3
    skip = greso_skip(streak=torch.tensor([0, 1, 2, 3]), explore_prob=0.5, uniform=torch.tensor([0.99, 0.4, 0.3, 0.1]), floor=0.01)
    assert skip.tolist() == [False, False, True, False]  # 0.99 < 1, 0.4 < 0.5, 0.3 >= 0.25, 0.1 < 0.125


def test_greso_skip_keeps_the_references_floor():
    # streak 10 at p 0.5: 0.5^10 = 0.00098, floored at 0.01 -> a draw of 0.005 rolls it out (without the floor: skipped),
    # one of 0.02 skips it; the reference's skip probability 1 - max(p^z, 0.01)
    skip = greso_skip(streak=torch.tensor([10, 10]), explore_prob=0.5, uniform=torch.tensor([0.005, 0.02], dtype=torch.float64),
                      floor=0.01)
    assert skip.tolist() == [False, True]
    assert greso_skip(streak=torch.tensor([10]), explore_prob=0.5, uniform=torch.tensor([0.005], dtype=torch.float64),
                      floor=0.0).tolist() == [True]


def test_greso_skip_reads_each_prompts_own_probability():
    # streak 1 each: p_easy 0.9 keeps a draw of 0.5, p_hard 0.2 skips it
    skip = greso_skip(streak=torch.tensor([1, 1]), explore_prob=torch.tensor([0.9, 0.2], dtype=torch.float64),
                      uniform=torch.tensor([0.5, 0.5], dtype=torch.float64), floor=0.01)
    assert skip.tolist() == [False, True]


def test_adapt_explore_prob_steps_towards_the_target_within_bounds():
    assert adapt_explore_prob(0.5, zero_share=0.30, target=0.25, delta=0.01, low=0.05, high=0.95) == pytest.approx(0.49)
    assert adapt_explore_prob(0.5, zero_share=0.10, target=0.25, delta=0.01, low=0.05, high=0.95) == pytest.approx(0.51)
    assert adapt_explore_prob(0.055, zero_share=1.0, target=0.25, delta=0.01, low=0.05, high=0.95) == 0.05
    assert adapt_explore_prob(0.95, zero_share=0.0, target=0.25, delta=0.01, low=0.05, high=0.95) == 0.95
    assert adapt_explore_prob(0.5, zero_share=1.0, target=0.25, delta=0.0, low=0.05, high=0.95) == 0.5  # delta 0: fixed


GRESO = dict(n=4, max_rounds=3, on_max_rounds="train", p_easy=0.5, p_hard=0.5, target_zero_variance=0.25, delta=0.01, p_min=0.05,
             p_max=0.95, explore_floor=0.01, seed=1, explore_min_attempts=4, decay=1.0)


def test_greso_steers_p_easy_and_p_hard_by_the_steps_zero_variance_shares():
    # a step of 4 groups: 2 all solved (easy share 0.5 >= 0.25/3), 0 all failed (hard share 0 < 0.25·2/3), 2 mixed,
    # and a prompt skipped (0 rollouts: not a group of this step)
    greso = GresoAllocator(**GRESO)
    greso.update(["a", "b", "c", "d", "skipped"], successes=torch.tensor([4.0, 4, 1, 2, 0]),
                 attempts=torch.tensor([4.0, 4, 4, 4, 0]))
    assert (greso.p_easy, greso.p_hard) == (0.5, 0.5)  # a first visit of every prompt: nothing could be skipped yet
    greso.update(["a", "b", "c", "d", "skipped"], successes=torch.tensor([4.0, 4, 1, 2, 0]),
                 attempts=torch.tensor([4.0, 4, 4, 4, 0]))
    assert (greso.p_easy, greso.p_hard) == (pytest.approx(0.49), pytest.approx(0.51))
    greso.update(["c"], successes=torch.tensor([0.0]), attempts=torch.tensor([4.0]))  # all failed: hard share 1, easy 0
    assert (greso.p_easy, greso.p_hard) == (pytest.approx(0.50), pytest.approx(0.50))
    state = greso.state_dict()
    assert state["last_solved"] == {"a": True, "b": True, "c": False}
    resumed = GresoAllocator(**GRESO)
    resumed.load_state_dict(state)
    assert (resumed.p_easy, resumed.p_hard, resumed.state_dict()) == (greso.p_easy, greso.p_hard, state)
    old = {k: v for k, v in state.items() if k not in ("last_solved", "p_easy", "p_hard")}  # before adaptive probabilities
    from_old = GresoAllocator(**GRESO)
    from_old.load_state_dict(old)
    assert (from_old.p_easy, from_old.p_hard) == (0.5, 0.5) and from_old.state_dict()["zero_streak"] == state["zero_streak"]
    # "a" (streak 2, easy) is rolled out with p_easy^2 = 0.25, "c" (streak 1, hard) with p_hard = 0.5, "d" (mixed) always
    draws = torch.stack([greso.allocate(["a", "c", "d"]).counts for _ in range(400)])
    assert draws[:, 2].eq(4).all() and 0.18 < draws[:, 0].eq(4).float().mean() < 0.32
    assert 0.42 < draws[:, 1].eq(4).float().mean() < 0.58


def test_zero_variance_streak_counts_the_trailing_run_of_one_kind():
    # all 4 solved after nothing: 0 -> 1; mixed 2/4: reset to 0; skipped (0 rollouts): unchanged 3; one rollout: unchanged 1;
    # all solved after 2 solved visits: 3; all failed after 2 *solved* visits: a new run of 1 (the reference counts the
    # easy and the hard runs apart: 2 easy then 1 hard is a hard streak of 1, not 3)
    judged, zero, solved = counted_zero_variance(successes=torch.tensor([4.0, 2, 0, 1, 4, 0]), attempts=torch.tensor([4.0, 4, 0, 1, 4, 4]))
    streak, kind = zero_variance_streak(streak=torch.tensor([0, 2, 3, 1, 2, 2]), solved_before=torch.tensor([False, True, True, False, True, True]),
                                        judged=judged, zero=zero, solved=solved)
    assert streak.tolist() == [1, 0, 3, 1, 3, 1]
    assert kind.tolist() == [True, True, True, False, True, False]


def test_zero_variance_is_judged_by_equal_rewards_not_by_rewards_above_zero():
    # partial credits: group 0 = (0.3, 0.7) has variance though both are > 0; group 1 = (0.5, 0.5) has none, a reward > 0
    # ("solved"); group 2 = (0, 0) none, failed; group 3 a single rollout: not judged
    judged, zero, solved = zero_variance_groups(rewards=torch.tensor([0.3, 0.7, 0.5, 0.5, 0.0, 0.0, 1.0]),
                                                group_index=torch.tensor([0, 0, 1, 1, 2, 2, 3]), num_groups=4)
    assert judged.tolist() == [True, True, True, False]
    assert zero.tolist() == [False, True, True, False] and solved.tolist() == [False, True, False, False]
    # GRESO reads the rounds' rewards: group 0 is mixed, so its streak stays 0 (counts of reward > 0 called it all solved)
    greso = GresoAllocator(**GRESO)
    greso.next_round(["a", "b"], rewards=torch.tensor([0.3, 0.7, 0.0, 0.0]), group_index=torch.tensor([0, 0, 1, 1]), round=3)
    greso.update(["a", "b"], successes=torch.tensor([2.0, 0.0]), attempts=torch.tensor([2.0, 2.0]))
    assert greso.state_dict()["zero_streak"] == {"a": 0, "b": 1}


def test_greso_skips_a_prompt_that_keeps_being_solved_and_resumes_exactly():
    greso = GresoAllocator(**GRESO)
    for _ in range(6):  # "easy" solved 4/4 six times in a row (streak 6: rolled out with probability <= 1/64); "mixed" 2/4
        greso.update(["easy", "mixed"], successes=torch.tensor([4.0, 2.0]), attempts=torch.tensor([4.0, 4.0]))
    assert greso.state_dict()["zero_streak"] == {"easy": 6, "mixed": 0}
    resumed = GresoAllocator(**GRESO)
    resumed.load_state_dict(greso.state_dict())
    draws = [greso.allocate(["easy", "mixed"]) for _ in range(20)]
    assert all(d.counts[1] == 4 for d in draws)  # streak 0: always rolled out
    assert sum(int(d.counts[0] == 0) for d in draws) >= 15  # skipped ~63/64 of the time
    assert [d.counts.tolist() for d in draws] == [resumed.allocate(["easy", "mixed"]).counts.tolist() for _ in range(20)]
    assert draws[0].metrics["alloc/skipped_prompts"] == float(draws[0].counts[0] == 0)


# -------------------------------------------------------------------------------------- Knapsack
def test_knapsack_value_by_hand():
    # p = 0.5, n = 2: (1 - 0.25 - 0.25) · 0.5 · 0.25 = 0.0625; n = 1 never has variance: 0; p = 0.9, n = 2: 0.18 · 0.009
    values = knapsack_value(rate=torch.tensor([0.5, 0.5, 0.9]), counts=torch.tensor([2, 1, 2]))
    torch.testing.assert_close(values, torch.tensor([0.0625, 0.0, 0.00162], dtype=torch.float64))


def test_knapsack_rollouts_hand_example():
    # rates [0.5, 0.9], n in [1, 3], budget 4: the 2 extra rollouts go to the largest marginal gains.
    # p = 0.5: V(1→2) = 0.0625, V(2→3) = 0.09375 - 0.0625 = 0.03125; p = 0.9: 0.00162, then 0.00081 -> [3, 1]
    assert knapsack_rollouts(rate=torch.tensor([0.5, 0.9]), budget=4, n_min=1, n_max=3).tolist() == [3, 1]
    assert knapsack_rollouts(rate=torch.tensor([0.5, 0.5]), budget=4, n_min=1, n_max=3).tolist() == [2, 2]  # ties share
    assert knapsack_rollouts(rate=torch.tensor([0.5, 0.9]), budget=99, n_min=1, n_max=3).tolist() == [3, 3]  # clipped


@pytest.mark.parametrize("seed", range(5))
def test_knapsack_rollouts_is_the_brute_force_optimum(seed):
    g = torch.Generator().manual_seed(seed)
    rate = torch.rand(4, generator=g, dtype=torch.float64) * 0.98 + 0.01
    n_min, n_max, budget = 1, 6, 13
    best = max((c for c in itertools.product(range(n_min, n_max + 1), repeat=4) if sum(c) == budget),
               key=lambda c: float(knapsack_value(rate=rate, counts=torch.tensor(c)).sum()))
    got = knapsack_rollouts(rate=rate, budget=budget, n_min=n_min, n_max=n_max)
    assert int(got.sum()) == budget and got.min() >= n_min and got.max() <= n_max
    assert float(knapsack_value(rate=rate, counts=got).sum()) == pytest.approx(float(knapsack_value(rate=rate, counts=torch.tensor(best)).sum()))


def test_knapsack_allocator_gives_the_hard_prompt_more_than_the_solved_one():
    knapsack = KnapsackAllocator(n=4, n_min=2, n_max=8, explore_min_attempts=4, decay=1.0)
    # "hard": 1 of 16 (Laplace 2/18), "solved": 16 of 16 (17/18): the hard prompt's rollouts are worth more
    knapsack.update(["hard", "solved"], successes=torch.tensor([1.0, 16.0]), attempts=torch.tensor([16.0, 16.0]))
    allocation = knapsack.allocate(["hard", "solved"])
    assert allocation.counts.tolist() == [6, 2] and int(allocation.counts.sum()) == 8
    assert 0 < allocation.metrics["alloc/expected_informative"] < 1


# ---------------------------------------------------------------------- DAPO through collect's rounds
def test_dapo_through_collect_draws_fresh_prompts_from_the_sampler_and_masks_dropped_groups():
    """A random tiny policy solves nothing, so every group is all-zero: DAPO asks for a full round of fresh prompts
    each time, stops at max_rounds, keeps no group. The fresh prompts continue the uniform sampler's stream (the next
    step starts after them), every rollout stays in the batch (counted) but none has a loss token."""
    from dynamo_cli.algo.reward_shaping import OverlongPenalty
    from dynamo_cli.config.model import TinyModelConfig
    from dynamo_cli.models.load import build_char_tokenizer, build_tiny_model
    from dynamo_cli.rollout.hf import PolicyRollouts
    from dynamo_cli.runtime.distributed import DataParallel
    from dynamo_cli.sampling.base import permutation_stream
    from dynamo_cli.sampling.uniform import UniformSampler
    from dynamo_cli.stages.collect import Collector
    from dynamo_cli.tasks.math import MathTask

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tokenizer)
    task = MathTask(seed=1, num_train=40, num_test_per_level=2, levels=["L5"], format="plain")
    problems = task.train_problems()
    sampler = UniformSampler(seed=0)
    collect = Collector(task=task, problems=problems, tokenizer=tokenizer, sampler=sampler,
                        allocator=DapoAllocator(n=2, max_rounds=3, on_max_rounds="train", explore_min_attempts=4, decay=1.0),
                        engine=PolicyRollouts(model, tokenizer), policy=model, reference=None, dp=DataParallel.start("cpu"),
                        per_step=4, seed=0, max_new_tokens=4, temperature=1.0, top_p=1.0, generation_batch=16, logprob_batch=16,
                        mask_truncated=False, shape_rewards=OverlongPenalty(factor=0.0, max_length=4, buffer=1))
    got = collect(1)
    assert not got.rewards.any()  # the premise: an untrained policy solves no two-digit sum
    stream = permutation_stream(0, 12, num_problems=len(problems), seed=0)
    assert [p.id for p in got.problems] == [problems[i].id for i in stream]  # 4 drawn + 4 + 4 fresh, in stream order
    assert got.allocation.counts.tolist() == [2] * 12 and len(got.rewards) == len(got.batch) == 24
    assert got.allocation.keep.tolist() == [False] * 12 and not got.batch.loss_mask.any()
    m = got.allocation.metrics
    assert (m["alloc/rounds"], m["alloc/dropped_groups"], m["alloc/spent_rollouts"], m["alloc/kept_groups"]) == (3.0, 12.0, 24.0, 0.0)
    assert sampler.state_dict() == {"extra": 8}
    assert sampler.prompt_indices(2, num_problems=len(problems), per_step=4) == permutation_stream(12, 4, num_problems=len(problems), seed=0)


# ------------------------------------------------------------------------------ presets and runs
def compose_train(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from dynamo_cli.cli import CONF_DIR, register_resolvers, to_schema
    from dynamo_cli.config.store import register_schemas

    register_schemas()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_schema(compose(config_name="train", overrides=overrides))


@pytest.mark.parametrize("preset, group, option", [("curriculum", "sampler", "curriculum"), ("dapo", "allocator", "dapo"),
                                                   ("greso", "allocator", "greso"), ("knapsack", "allocator", "knapsack")])
def test_rollout_presets_are_clip_higher_plus_one_part(preset, group, option):
    base, cfg = compose_train(["experiment=clip_higher"]), compose_train([f"experiment={preset}"])
    assert getattr(cfg, group).name == option and cfg.modulator.name == "none"
    assert cfg.algorithm == base.algorithm and cfg.rollout == base.rollout and cfg.optim == base.optim
    other = "allocator" if group == "sampler" else "sampler"
    assert getattr(cfg, other) == getattr(base, other)


def test_curriculum_refuses_a_task_with_one_tag():
    from dynamo_cli.errors import DynamoError
    from dynamo_cli.recipes import parts
    from dynamo_cli.tasks.base import Problem

    cfg = compose_train(["sampler=curriculum"])
    with pytest.raises(DynamoError, match="sampler.order=tag needs at least two difficulty tags.*choose sampler.order=success"):
        parts.build_sampler(cfg, problems=[Problem(f"t/{i}", str(i), "0", "all") for i in range(4)])
    assert parts.build_sampler(cfg, problems=[Problem("a", "1", "1", "L1"), Problem("b", "2", "2", "L2")]).pace_steps == 200


