"""GSPO and CISPO (algorithm.policy_loss=gspo|cispo) against hand-worked values, and the policy-term mask."""
import math

import pytest
import torch

from dynamo_cli.algo.terms.base import POLICY_LOSSES, Loss, Weighted
from dynamo_cli.algo.terms.cispo import CISPO, cispo_loss
from dynamo_cli.algo.terms.gspo import GSPO, gspo_loss, sequence_log_ratio
from dynamo_cli.algo.terms.kl import ReferenceKL
from dynamo_cli.algo.terms.ppo_clip import PPOClip
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories


def test_gspo_ratio_is_the_length_normalised_sequence_ratio():
    # row 0: log-ratios .3, 0, -.3 -> mean 0 -> s = 1;  row 1: .003, .003 (third is padding) -> s = e^.003
    log_ratio = torch.tensor([[0.3, 0.0, -0.3], [0.003, 0.003, 5.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    s = sequence_log_ratio(logprobs=log_ratio - 1.0, old_logprobs=torch.full((2, 3), -1.0), mask=mask).exp()
    torch.testing.assert_close(s, torch.tensor([[1.0], [math.exp(0.003)]]))


def test_gspo_clips_whole_sequences_by_hand():
    # GSPO's range 1 - 3e-4 .. 1 + 4e-4
    #   row 0, A = +1, log-ratios (.3, 0, -.3): s = 1 inside -> loss -1 per token; d/dlog pi_t = -A s = -1 on every token
    #   row 1, A = +1, log-ratios (.003, .003): s = 1.0030045 > 1.0004 -> -1.0004, clipped, no gradient
    #   row 2, A = -1, log-ratio (-.001): s = .9990005 < .9997 -> max(.9990005, .9997) = .9997, clipped, no gradient
    old = torch.zeros(3, 3)
    logprobs = torch.tensor([[0.3, 0.0, -0.3], [0.003, 0.003, 0.0], [-0.001, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
    advantages = torch.tensor([[1.0] * 3, [1.0] * 3, [-1.0] * 3])
    loss, clipped, s = gspo_loss(logprobs=logprobs, old_logprobs=old, advantages=advantages, sequence_mask=mask, mask=mask,
                                 eps_low=3e-4, eps_high=4e-4)
    expected = torch.tensor([[-1.0, -1.0, -1.0], [-1.0004, -1.0004, 0.0], [0.9997, 0.0, 0.0]])
    torch.testing.assert_close(loss, expected)
    assert clipped.tolist() == [[False] * 3, [True, True, False], [True, False, False]]
    loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-1.0, -1.0, -1.0], [0.0] * 3, [0.0] * 3]))


def test_gspo_keeps_the_sequence_ratio_when_a_modulator_drops_tokens():
    # the sequence is its loss-mask tokens: dropping token 0 from the policy term (policy_mask) leaves s = e^((.3+0-.3)/3) = 1;
    # a ratio over the kept tokens only would be e^(-.15) and clip nothing the same way
    logprobs = torch.tensor([[0.3, 0.0, -0.3]])
    batch = Trajectories(input_ids=torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 4, dtype=torch.long),
                         loss_mask=torch.ones(1, 3, dtype=torch.bool), prompt_index=torch.zeros(1, dtype=torch.long), prompt_width=1,
                         advantages=torch.ones(1, 3), old_logprobs=torch.zeros(1, 3),
                         policy_mask=torch.tensor([[False, True, True]]))
    per_token, metrics = GSPO(eps_low=3e-4, eps_high=4e-4)(batch, ModelOutputs(logprobs=logprobs))
    torch.testing.assert_close(per_token, torch.tensor([[0.0, -1.0, -1.0]]))
    assert metrics["clip_frac"].sum() == 0


def test_cispo_keeps_every_token_gradient_with_a_clipped_weight():
    # eps_low 1 (no lower bound, the paper), eps_high .28; log pi = (-1, -2, -.5), log-ratios (.5, 0, -2), A = (1, 1, -1):
    #   w = clip(e^.5 = 1.6487 -> 1.28, 1, e^-2 = .13534 -> no lower bound: .13534)
    #   loss = -w A log pi = (-1.28 * -1 = 1.28, -1 * -2 = 2, -.13534 * -1 * -.5 = -.06767)
    #   d/dlog pi = -w A = (-1.28, -1, .13534): the clipped token still learns, at weight 1.28 (PPO would pass 0)
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    old = logprobs.detach() - torch.tensor([[0.5, 0.0, -2.0]])
    loss, clipped = cispo_loss(logprobs=logprobs, old_logprobs=old, advantages=torch.tensor([[1.0, 1.0, -1.0]]),
                               mask=torch.ones(1, 3, dtype=torch.bool), eps_low=1.0, eps_high=0.28)
    w2 = math.exp(-2)
    torch.testing.assert_close(loss, torch.tensor([[1.28, 2.0, -w2 * 0.5]]))
    assert clipped.tolist() == [[True, False, False]]
    loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-1.28, -1.0, w2]]))


def test_a_dropped_token_leaves_the_policy_term_only():
    # policy_mask drops token 0 of row 0: pg_loss loses it, while the KL term (and the denominators) keep every loss token.
    # ratio 1, A = 1 -> pg per token -1: token mean over the 5 loss tokens = -4/5 (4 kept); KL d = -1 everywhere: e^-1
    logprobs = torch.full((2, 3), -1.0)
    batch = Trajectories(input_ids=torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 4, dtype=torch.long),
                         loss_mask=torch.tensor([[True, True, True], [True, True, False]]), prompt_index=torch.tensor([0, 0]),
                         prompt_width=1, advantages=torch.ones(2, 3), old_logprobs=logprobs.clone(), ref_logprobs=logprobs - 1,
                         policy_mask=torch.tensor([[False, True, True], [True, True, False]]))
    loss = Loss(terms=[Weighted(PPOClip(eps_low=0.2, eps_high=0.28), 1.0), Weighted(ReferenceKL(), 1.0)], mode="token_mean")
    _, metrics = loss(batch, ModelOutputs(logprobs=logprobs), num_tokens=5, num_sequences=2)
    assert metrics["pg_loss"] == pytest.approx(-0.8) and metrics["kl_ref"] == pytest.approx(math.exp(-1))
    # seq_mean: row lengths are the loss mask's (3 and 2), not the kept tokens' (2 and 2): (-2/3 - 2/2) / 2
    seq = Loss(terms=[Weighted(PPOClip(eps_low=0.2, eps_high=0.28), 1.0)], mode="seq_mean")
    _, metrics = seq(batch, ModelOutputs(logprobs=logprobs), num_tokens=5, num_sequences=2)
    assert metrics["pg_loss"] == pytest.approx((-2 / 3 - 1.0) / 2)


def test_every_policy_loss_is_registered():
    assert POLICY_LOSSES.names() == ["ppo_clip", "gspo", "cispo"]
    assert CISPO(eps_low=1.0, eps_high=0.28).name == GSPO(eps_low=1e-4, eps_high=1e-4).name == "pg_loss"
