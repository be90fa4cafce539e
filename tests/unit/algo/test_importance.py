"""Truncated importance sampling of the rollout engine's samples (algo/importance.py, algorithm.rollout_is): the weights
by hand, token and sequence level, the cap, the mask."""
from __future__ import annotations

import math

import pytest
import torch

from dynamo_cli.algo.importance import mismatch_kl, truncated_is_weights


def _batch():
    # row 0: π_old / μ = 0.5 / 0.25 = 2, 0.2 / 0.4 = 0.5, and a masked token with ratio 9 that must not count
    # row 1: one token, ratio 0.3 / 0.1 = 3
    trainer = torch.tensor([[0.5, 0.2, 0.9], [0.3, 0.5, 0.5]]).log()
    rollout = torch.tensor([[0.25, 0.4, 0.1], [0.1, 0.5, 0.5]]).log()
    mask = torch.tensor([[True, True, False], [True, False, False]])
    return dict(trainer_logprobs=trainer, rollout_logprobs=rollout, mask=mask)


def test_token_level_weights_are_the_ratios_truncated_at_the_cap():
    weights, truncated = truncated_is_weights(**_batch(), level="token", cap=1.5)
    # row 0: min(2, 1.5) = 1.5, min(0.5, 1.5) = 0.5, masked -> 1; row 1: min(3, 1.5) = 1.5, masked -> 1
    assert torch.allclose(weights, torch.tensor([[1.5, 0.5, 1.0], [1.5, 1.0, 1.0]]))
    assert truncated.tolist() == [[True, False, False], [True, False, False]]
    assert not weights.requires_grad


def test_sequence_level_weights_are_the_truncated_product_over_the_policy_tokens():
    weights, truncated = truncated_is_weights(**_batch(), level="sequence", cap=2.5)
    # row 0: 2 × 0.5 = 1 (the masked ratio 9 left out) on every token; row 1: min(3, 2.5) = 2.5, truncated
    assert weights[0].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert weights[1].tolist() == pytest.approx([2.5, 1.0, 1.0])  # off the mask: 1
    assert truncated.tolist() == [[False, False, False], [True, False, False]]
    with pytest.raises(ValueError, match="one of token, sequence"):
        truncated_is_weights(**_batch(), level="batch", cap=2.0)


def test_identical_log_probs_give_weight_one_and_no_mismatch():
    logprobs = torch.randn(4, 6).log_softmax(-1)
    mask = torch.rand(4, 6) > 0.3
    for level in ("token", "sequence"):
        weights, truncated = truncated_is_weights(trainer_logprobs=logprobs, rollout_logprobs=logprobs, mask=mask, level=level, cap=2.0)
        assert torch.equal(weights, torch.ones(4, 6)) and not truncated.any()
    assert torch.equal(mismatch_kl(trainer_logprobs=logprobs, rollout_logprobs=logprobs), torch.zeros(4, 6))


def test_mismatch_kl_is_k3_of_the_ratio():
    kl = mismatch_kl(trainer_logprobs=torch.tensor([0.5, 0.2]).log(), rollout_logprobs=torch.tensor([0.25, 0.4]).log())
    # r - 1 - log r: r = 2 -> 1 - log 2 = 0.3069; r = 0.5 -> -0.5 + log 2 = 0.1931
    assert kl.tolist() == pytest.approx([1 - math.log(2), -0.5 + math.log(2)], abs=1e-6)


def test_the_corrected_policy_term_scales_each_token_loss_by_its_weight_and_logs_it():
    from dynamo_cli.algo.importance import RolloutCorrected
    from dynamo_cli.algo.terms.ppo_clip import PPOClip
    from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories

    b = _batch()
    batch = Trajectories(input_ids=torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 5, dtype=torch.long),
                         loss_mask=b["mask"], prompt_index=torch.tensor([0, 1]), prompt_width=2, advantages=torch.ones(2, 3),
                         old_logprobs=b["trainer_logprobs"], rollout_logprobs=b["rollout_logprobs"])
    out = ModelOutputs(logprobs=b["trainer_logprobs"].clone())  # the current policy is π_old: PPO ratio 1, loss -A = -1
    term = RolloutCorrected(PPOClip(eps_low=0.2, eps_high=0.28), level="token", cap=1.5)
    per_token, metrics = term(batch, out)
    assert term.name == "pg_loss"  # the policy term keeps its metric name
    # -A × w on policy tokens (the weights by hand above), 0 off the mask as PPO-clip leaves it
    assert torch.allclose(per_token, -torch.tensor([[1.5, 0.5, 0.0], [1.5, 0.0, 0.0]]))
    assert torch.allclose(metrics["rollout_is_truncated_frac"], torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]))
    assert set(metrics) == {"clip_frac", "approx_kl", "rollout_is_weight", "rollout_is_truncated_frac", "rollout_mismatch_kl"}
    assert float(metrics["rollout_mismatch_kl"][0, 0]) == pytest.approx(1 - math.log(2), abs=1e-6)


def test_an_engine_log_prob_that_is_unknown_is_not_corrected():
    b = _batch()
    b["rollout_logprobs"][0, 0] = float("nan")  # e.g. an EOS the engine left out and rollouts_from_token_ids added
    weights, truncated = truncated_is_weights(**b, level="sequence", cap=2.5)
    assert weights[0].tolist() == pytest.approx([0.5, 0.5, 1.0])  # the product of the known ratio (0.5), on every policy token
    token, _ = truncated_is_weights(**b, level="token", cap=2.5)
    assert token[0].tolist() == pytest.approx([1.0, 0.5, 1.0])  # token level: the unknown one uncorrected
    assert mismatch_kl(trainer_logprobs=b["trainer_logprobs"], rollout_logprobs=b["rollout_logprobs"])[0, 0] == 0


def test_rollouts_from_token_ids_carry_the_engines_log_probs():
    from dynamo_cli.models.load import build_char_tokenizer
    from dynamo_cli.rollout.hf import rollouts_from_token_ids

    tok = build_char_tokenizer()
    eos = tok.eos_token_id
    r = rollouts_from_token_ids(tok, [[10, 11]], torch.tensor([0, 0]), [[12, 13], [12, eos]], [False, True], logprobs=[[-1.0, -2.0], [-0.5, -0.25]])
    assert torch.equal(r.logprobs, torch.tensor([[-1.0, -2.0], [-0.5, -0.25]]))
    added = rollouts_from_token_ids(tok, [[10]], torch.tensor([0]), [[12]], [True], logprobs=[[-0.5]])  # EOS added: unknown
    assert added.logprobs[0, 0] == -0.5 and added.logprobs[0, 1].isnan()


def test_rollout_is_needs_an_engine_that_reports_log_probs():
    from helpers import compose_schema

    from dynamo_cli.config.base import ConfigError

    with pytest.raises(ConfigError, match="algorithm.rollout_is=token corrects the rollout engine's log-probs.*use rollout=vllm"):
        compose_schema("train", ["algorithm.rollout_is=token"])
    with pytest.raises(ConfigError, match="algorithm.rollout_is='both' is not allowed; choose one of: none, token, sequence"):
        compose_schema("train", ["algorithm.rollout_is=both"])
    cfg = compose_schema("train", ["algorithm.rollout_is=sequence", "rollout=vllm"])  # composes; vLLM itself needs a GPU
    from dynamo_cli.algo.importance import RolloutCorrected
    from dynamo_cli.algo.terms.base import build_loss

    assert isinstance(build_loss(cfg).terms[0].term, RolloutCorrected)
    assert not isinstance(build_loss(compose_schema("train", [])).terms[0].term, RolloutCorrected)  # off by default
