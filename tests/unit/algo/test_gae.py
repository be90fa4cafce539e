"""GAE over completion tokens, the clipped value loss and masked whitening: hand-worked values, and the vectorised
scan against a plain per-sequence Python loop on ragged lengths (as cleanrl checks its GAE)."""
from __future__ import annotations

import math

import torch

from dynamo_cli.algo.advantages.gae import gae_advantages, masked_whiten, token_rewards
from dynamo_cli.algo.terms.value import value_loss


def loop_gae(rewards: list[float], values: list[float], *, gamma: float, lam: float) -> tuple[list[float], list[float]]:
    """The textbook recursion on one sequence's policy tokens, back to front (V after the last token is 0)."""
    advantages, next_value, next_advantage = [0.0] * len(rewards), 0.0, 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_value - values[t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[t], next_value = next_advantage, values[t]
    return advantages, [a + v for a, v in zip(advantages, values, strict=True)]


def test_terminal_reward_lands_on_the_last_policy_token_and_kl_on_every_one():
    mask = torch.tensor([[True, True, True], [True, True, False], [False, False, False]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 9.0], [5.0, 5.0, 5.0]])
    r = token_rewards(rewards=torch.tensor([1.0, 2.0, 3.0]), mask=mask, kl=kl, kl_coef=0.5)
    # row 0: [-0.05, -0.1, 1 - 0.15]; row 1: [-0.5, 2 - 0.5, pad 0]; row 2: no policy tokens, nothing at all
    torch.testing.assert_close(r, torch.tensor([[-0.05, -0.1, 0.85], [-0.5, 1.5, 0.0], [0.0, 0.0, 0.0]]))


def test_gae_hand_worked():
    mask = torch.tensor([[True, True, True], [True, True, False]])
    values = torch.tensor([[0.5, 0.25, 0.0], [0.2, 0.4, 9.0]])  # row 1's last position is padding (its 9 never enters)
    rewards = token_rewards(rewards=torch.tensor([1.0, 0.0]), mask=mask)
    # γ = λ = 1: A_t = R − V_t, G_t = R
    adv, ret = gae_advantages(rewards=rewards, values=values, mask=mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.75, 1.0], [-0.2, -0.4, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    # γ = 1, λ = 0.5, row 0: δ2 = 1 − 0 = 1, A2 = 1; δ1 = 0 + 0 − 0.25, A1 = −0.25 + 0.5·1 = 0.25;
    #   δ0 = 0.25 − 0.5, A0 = −0.25 + 0.5·0.25 = −0.125; G = A + V = [0.375, 0.5, 1]
    # row 1: δ1 = −0.4 = A1; δ0 = 0.4 − 0.2 = 0.2, A0 = 0.2 + 0.5·(−0.4) = 0; G = [0.2, 0]
    adv, ret = gae_advantages(rewards=rewards, values=values, mask=mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[-0.125, 0.25, 1.0], [0.0, -0.4, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.375, 0.5, 1.0], [0.2, 0.0, 0.0]]))


def test_vectorised_gae_matches_a_python_loop_on_ragged_sequences():
    g = torch.Generator().manual_seed(0)
    N, L = 7, 11
    lengths = torch.tensor([11, 1, 5, 0, 8, 3, 10])
    mask = torch.arange(L)[None, :] < lengths[:, None]
    mask[6, 4:6] = False  # a multi-turn row: environment tokens inside the response region are skipped
    rewards = torch.randn(N, L, generator=g) * mask
    values = torch.randn(N, L, generator=g)
    for gamma, lam in [(1.0, 1.0), (1.0, 0.95), (0.9, 0.5)]:
        adv, ret = gae_advantages(rewards=rewards, values=values, mask=mask, gamma=gamma, lam=lam)
        for i in range(N):
            cols = mask[i].nonzero().flatten()
            want_adv, want_ret = loop_gae(rewards[i, cols].tolist(), values[i, cols].tolist(), gamma=gamma, lam=lam)
            torch.testing.assert_close(adv[i, cols], torch.tensor(want_adv), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ret[i, cols], torch.tensor(want_ret), rtol=1e-5, atol=1e-6)
        assert not adv[~mask].any() and not ret[~mask].any()


def test_masked_whiten_uses_only_valid_tokens():
    x = torch.tensor([[1.0, 2.0, 3.0], [100.0, 5.0, 7.0]])
    mask = torch.tensor([[True, True, True], [False, True, False]])
    # valid: 1, 2, 3, 5 -> mean 2.75, unbiased var ((1.75² + 0.75² + 0.25² + 2.25²) / 3) = 8.75 / 3
    sd = math.sqrt(8.75 / 3 + 1e-8)
    want = torch.tensor([[-1.75 / sd, -0.75 / sd, 0.25 / sd], [0.0, 2.25 / sd, 0.0]])
    torch.testing.assert_close(masked_whiten(x, mask), want)
    # two processes each holding one row: `total` adds the other process's (count, sum, sum of squares), in call order
    def other(rank):
        o = 1 - rank
        return iter([float(mask[o].sum()), float((x * mask)[o].sum()), float((x * mask)[o].square().sum())])

    for rank in (0, 1):
        theirs = other(rank)
        mine = masked_whiten(x[rank:rank + 1], mask[rank:rank + 1], total=lambda value, theirs=theirs: value + next(theirs))
        torch.testing.assert_close(mine, want[rank:rank + 1])


def test_value_loss_clips_the_move_away_from_the_old_value():
    mask = torch.tensor([[True, True, False]])
    old = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, 1.0]])
    values = torch.tensor([[0.5, -0.5, 3.0]], requires_grad=True)
    loss, clipped = value_loss(values=values, old_values=old, returns=returns, mask=mask, clip=0.2)
    # token 0: unclipped (0.5 − 1)² = 0.25, clipped (0.2 − 1)² = 0.64 -> 0.5 · 0.64 = 0.32, clipped (no gradient)
    # token 1: unclipped (−1.5)² = 2.25, clipped (−0.2 − 1)² = 1.44 -> 0.5 · 2.25 = 1.125, gradient V − G = −1.5
    torch.testing.assert_close(loss, torch.tensor([[0.32, 1.125, 0.0]]))
    assert clipped.tolist() == [[True, False, False]]
    loss.sum().backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, -1.5, 0.0]]))
    unclipped, none = value_loss(values=values.detach(), old_values=old, returns=returns, mask=mask, clip=0.0)
    torch.testing.assert_close(unclipped, torch.tensor([[0.125, 1.125, 0.0]]))
    assert not none.any()
