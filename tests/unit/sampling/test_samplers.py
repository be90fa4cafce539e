"""Samplers: the curriculum's pacing and ordering against hand-worked values, its draw, its online order and its
exact resume; the uniform sampler's fresh prompts."""
from __future__ import annotations

import pytest
import torch

from dynamo_cli.sampling.base import permutation_stream, step_prompt_indices
from dynamo_cli.sampling.curriculum import (
    CurriculumSampler,
    curriculum_order,
    laplace_rate,
    natural_key,
    success_order_rates,
    tag_ranks,
    unlocked_share,
)
from dynamo_cli.sampling.uniform import UniformSampler
from dynamo_cli.tasks.base import Problem


def test_linear_pacing_by_hand():
    # start 0.25, 100 pace steps: step 1 -> 0.25; step 51 -> 0.25 + 0.75 · 50/100 = 0.625; step 101 and later -> 1
    share = [unlocked_share(s, start=0.25, pace_steps=100, pacing="linear", stages=3) for s in (1, 51, 101, 500)]
    assert share == pytest.approx([0.25, 0.625, 1.0, 1.0])
    assert unlocked_share(1, start=0.25, pace_steps=0, pacing="linear", stages=3) == 1.0  # no pacing: everything at once


def test_step_pacing_by_hand():
    # start 0.25, 90 pace steps, 3 stages: q = (s - 1)/90; share = 0.25 + 0.75 · floor(3q)/3
    # s = 30: q = 0.322 -> 0.25; s = 31: q = 1/3 -> 0.5; s = 61: 0.75; s = 91: 1
    share = [unlocked_share(s, start=0.25, pace_steps=90, pacing="step", stages=3) for s in (1, 30, 31, 61, 91)]
    assert share == pytest.approx([0.25, 0.25, 0.5, 0.75, 1.0])


def test_tags_rank_in_natural_order_or_as_given():
    assert sorted(["L10", "L2", "L1"], key=natural_key) == ["L1", "L2", "L10"]
    assert tag_ranks(["L5", "L3", "L4", "L3"], order=None).tolist() == [2, 0, 1, 0]
    assert tag_ranks(["L5", "L3", "L4", "L3"], order=["L4", "L3", "L5"]).tolist() == [2, 1, 0, 1]
    with pytest.raises(ValueError, match="not in the curriculum's tag order"):
        tag_ranks(["L5", "L6"], order=["L5"])


def test_curriculum_order_by_hand():
    # ranks [1, 0, 1, 0], tie-break ranks [3, 2, 1, 0]: level 0 holds prompts 1 (tie 2) and 3 (tie 0) -> 3, 1;
    # level 1 holds 0 (tie 3) and 2 (tie 1) -> 2, 0
    rank, tie = torch.tensor([1, 0, 1, 0]), torch.tensor([3, 2, 1, 0])
    assert curriculum_order(tag_rank=rank, tie_break=tie).tolist() == [3, 1, 2, 0]
    # online: success rate first (descending), then level, then the tie-break: 0 (0.9), 1 and 2 (0.5: level 0 first), 3
    rate = torch.tensor([0.9, 0.5, 0.5, 0.2])
    assert curriculum_order(tag_rank=rank, tie_break=tie, success_rate=rate).tolist() == [0, 1, 2, 3]
    # (k + 1)/(G + 2): unseen 0.5, 1 of 1 -> 2/3, 0 of 4 -> 1/6
    assert laplace_rate(successes=torch.tensor([0.0, 1, 0]), attempts=torch.tensor([0.0, 1, 4])).tolist() == pytest.approx([0.5, 2 / 3, 1 / 6])


def test_unseen_prompts_rank_by_their_tags_rate():
    # tags 0, 0, 1, 1, 2; rows 0 (2 of 2) and 2 (0 of 2) seen. row 0: 3/4; row 1 unseen, tag 0 pooled 2 of 2: 3/4;
    # row 2: 1/4; row 3 unseen, tag 1 pooled 0 of 2: 1/4; row 4 unseen, tag 2 has no rollouts: -1, after every rate
    rates = success_order_rates(successes=torch.tensor([2.0, 0, 0, 0, 0], dtype=torch.float64),
                                attempts=torch.tensor([2.0, 0, 2, 0, 0], dtype=torch.float64), tag_rank=torch.tensor([0, 0, 1, 1, 2]))
    assert rates.tolist() == [0.75, 0.75, 0.25, 0.25, -1.0]
    # nothing seen: every key -1, so the order is the tag order
    none = success_order_rates(successes=torch.zeros(3, dtype=torch.float64), attempts=torch.zeros(3, dtype=torch.float64),
                               tag_rank=torch.tensor([1, 0, 1]))
    assert curriculum_order(tag_rank=torch.tensor([1, 0, 1]), tie_break=torch.tensor([0, 1, 2]), success_rate=none).tolist() == [1, 0, 2]


def pool() -> list[Problem]:
    """4 L4 problems then 4 L3 problems: the curriculum must put L3 first."""
    return [Problem(f"t/{level}/{i}", str(i), "0", level) for level in ("L4", "L3") for i in range(4)]


def curriculum(order: str, **kw) -> CurriculumSampler:
    settings = dict(seed=0, order=order, pacing="linear", start=0.5, pace_steps=2, stages=1, tag_order=None, steps=4) | kw
    return CurriculumSampler(problems=pool(), **settings)


def test_curriculum_draws_easy_first_then_unlocks_everything():
    sampler = curriculum("tag")
    first = sampler.prompt_indices(1, num_problems=8, per_step=3)  # share 0.5 -> 4 unlocked: the 4 L3 problems
    assert sorted(first) == sorted(set(first)) and all(pool()[i].level == "L3" for i in first)
    fresh = sampler.more(1, num_problems=8, count=1)  # the 4th L3 problem: no repeat within the step
    assert sorted(first + fresh) == [4, 5, 6, 7]
    assert sampler.unlocked(2, per_step=3) == 6 and sampler.unlocked(3, per_step=3) == 8  # 0.75 · 8, then all
    assert curriculum("tag", start=0.1).unlocked(1, per_step=3) == 3  # never fewer than a step's prompts
    assert sampler.prompt_indices(5, num_problems=8, per_step=3) == curriculum("tag").prompt_indices(5, num_problems=8, per_step=3)


def test_online_curriculum_moves_a_solved_prompt_first_and_resumes_exactly():
    sampler = curriculum("success")
    assert sampler.ordering()[:4].tolist() != [0, 1, 2, 3]  # no history: the tag order (L3 = rows 4..7) first
    assert all(pool()[i].level == "L3" for i in sampler.ordering()[:4].tolist())
    # row 0 (an L4 problem) solved twice of twice (3/4), row 4 (L3) failed twice (1/4): the unseen L4 problems take
    # their level's pooled rate 3/4 and the unseen L3 ones 1/4, so every L4 problem now comes before every L3 one
    # (at 0.5 the unseen L3 problems would have sat between row 0 and row 4, ahead of the L4 level that proved easier)
    sampler.update(["t/L4/0", "t/L3/0"], rewards=torch.tensor([1.0, 1.0, 0.0, 0.0]), group_index=torch.tensor([0, 0, 1, 1]))
    order = sampler.ordering().tolist()
    assert sorted(order[:4]) == [0, 1, 2, 3] and sorted(order[4:]) == [4, 5, 6, 7]
    resumed = curriculum("success")
    resumed.load_state_dict(sampler.state_dict())
    assert resumed.ordering().tolist() == order
    assert resumed.prompt_indices(1, num_problems=8, per_step=3) == sampler.prompt_indices(1, num_problems=8, per_step=3)
    with pytest.raises(ValueError, match="different prompt pool"):
        CurriculumSampler(problems=pool()[:4], seed=0, order="success", pacing="linear", start=0.5, pace_steps=2, stages=1,
                          tag_order=None, steps=4).load_state_dict(sampler.state_dict())


def test_uniform_sampler_fresh_prompts_continue_the_stream_and_shift_later_steps():
    sampler = UniformSampler(seed=3)
    assert sampler.prompt_indices(1, num_problems=10, per_step=4) == step_prompt_indices(1, num_problems=10, per_step=4, seed=3)
    assert sampler.more(1, num_problems=10, count=2) == permutation_stream(4, 2, num_problems=10, seed=3)
    assert sampler.prompt_indices(2, num_problems=10, per_step=4) == permutation_stream(6, 4, num_problems=10, seed=3)
    resumed = UniformSampler(seed=3)
    resumed.load_state_dict(sampler.state_dict())
    assert resumed.prompt_indices(3, num_problems=10, per_step=4) == permutation_stream(10, 4, num_problems=10, seed=3)
    old = UniformSampler(seed=3)
    old.load_state_dict({})  # a checkpoint from before fresh prompts
    assert old.prompt_indices(2, num_problems=10, per_step=4) == step_prompt_indices(2, num_problems=10, per_step=4, seed=3)
