import math

import pytest
import torch

from dynamo_cli.algo.advantages.drgrpo import drgrpo_advantages
from dynamo_cli.algo.advantages.grpo import grpo_advantages
from dynamo_cli.algo.advantages.rloo import rloo_advantages
from dynamo_cli.algo.masked import masked_mean, masked_sum

# Ragged, interleaved groups (group_index is not sorted):
#   group 0: size 1, r = 1          -> no signal
#   group 1: size 2, r = 0, 1       mean .5
#   group 2: size 3, r = 1, 0, 0    mean 1/3
#   group 3: size 3, r = 1, 1, 1    all equal -> no signal
#   group 4: size 2, r = 0, 0       all equal -> no signal
GROUPS = torch.tensor([2, 1, 0, 2, 3, 1, 4, 2, 3, 3, 4])
REWARDS = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
ZERO = [False, False, True, False, True, False, True, False, True, True, True]

GROUP_ADVANTAGES = {"grpo": grpo_advantages, "drgrpo": drgrpo_advantages, "rloo": rloo_advantages}


def test_masked_mean_and_sum_ignore_padding():
    values = torch.tensor([[1.0, 2.0, math.nan], [4.0, math.inf, 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 0, 0]]).bool()
    assert masked_sum(values, mask).item() == 13.0  # 1 + 2 + 4 + 6
    assert masked_mean(values, mask).item() == 3.25  # 13 / 4
    assert masked_mean(values, mask, dim=1).tolist() == [1.5, 5.0, 0.0]  # empty row -> 0, not nan
    assert masked_sum(values, mask, dim=1).tolist() == [3.0, 10.0, 0.0]


def test_grpo_hand_values():
    # group 1: mean .5, unbiased std sqrt((.25 + .25) / 1) = .70711 -> -.5/.70711 = -.70711, +.70711
    # group 2: mean 1/3, devs 2/3, -1/3, -1/3; unbiased var (4/9 + 1/9 + 1/9) / 2 = 1/3, std .57735
    #          -> (2/3)/.57735 = 1.15470, (-1/3)/.57735 = -.57735
    adv, zero = grpo_advantages(rewards=REWARDS, group_index=GROUPS, num_groups=5)
    s2, s3 = math.sqrt(0.5), math.sqrt(1 / 3)
    expected = [(2 / 3) / s3, -0.5 / s2, 0, (-1 / 3) / s3, 0, 0.5 / s2, 0, (-1 / 3) / s3, 0, 0, 0]
    torch.testing.assert_close(adv, torch.tensor(expected), rtol=0, atol=1e-5)  # eps = 1e-6 in the denominator
    assert zero.tolist() == ZERO
    assert bool((adv[zero] == 0).all())  # exactly zero, not ~1e-17


def test_drgrpo_hand_values():
    # r - group mean, no std: group 1 -> -.5, +.5; group 2 -> 2/3, -1/3, -1/3
    adv, zero = drgrpo_advantages(rewards=REWARDS, group_index=GROUPS, num_groups=5)
    expected = [2 / 3, -0.5, 0, -1 / 3, 0, 0.5, 0, -1 / 3, 0, 0, 0]
    torch.testing.assert_close(adv, torch.tensor(expected))
    assert zero.tolist() == ZERO


def test_rloo_hand_values():
    # r_i - mean of the OTHER rewards of the group:
    # group 1: 0 - 1 = -1, 1 - 0 = 1; group 2: 1 - (0+0)/2 = 1, 0 - (1+0)/2 = -.5 (twice)
    adv, zero = rloo_advantages(rewards=REWARDS, group_index=GROUPS, num_groups=5)
    expected = [1, -1, 0, -0.5, 0, 1, 0, -0.5, 0, 0, 0]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float32))
    assert zero.tolist() == ZERO


@pytest.mark.parametrize("name", sorted(GROUP_ADVANTAGES))
def test_all_equal_non_binary_groups_are_exactly_zero(name):
    # .1 * 3 / 3 != .1 in floating point, so a mean-based check would leave ~1e-17 / (1e-17 + eps) behind
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.3])
    groups = torch.tensor([0, 0, 0, 2, 2])  # group 1 is empty: must not produce nan anywhere
    adv, zero = GROUP_ADVANTAGES[name](rewards=rewards, group_index=groups, num_groups=3)
    assert adv[:3].tolist() == [0.0, 0.0, 0.0] and zero.tolist() == [True, True, True, False, False]
    assert bool(torch.isfinite(adv).all()) and adv[3] > 0 > adv[4]


def test_integer_rewards_and_zero_sum_within_groups():
    adv, _ = drgrpo_advantages(rewards=REWARDS.long(), group_index=GROUPS, num_groups=5)
    sums = torch.zeros(5).index_add_(0, GROUPS, adv)
    torch.testing.assert_close(sums, torch.zeros(5))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        grpo_advantages(rewards=REWARDS, group_index=GROUPS[:-1], num_groups=5)
