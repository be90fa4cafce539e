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


def test_rollouts_from_token_ids_carry_the_engines_log_probs_and_append_nothing():
    from dynamo_cli.models.load import build_char_tokenizer
    from dynamo_cli.rollout.hf import rollouts_from_token_ids

    tok = build_char_tokenizer()
    eos = tok.eos_token_id
    r = rollouts_from_token_ids(tok, [[10, 11]], torch.tensor([0, 0]), [[12, 13], [12, eos]], [False, True], logprobs=[[-1.0, -2.0], [-0.5, -0.25]])
    assert torch.equal(r.logprobs, torch.tensor([[-1.0, -2.0], [-0.5, -0.25]]))
    # a finished completion whose end token the engine did not return gets none added: no token it never sampled is trained on
    kept = rollouts_from_token_ids(tok, [[10]], torch.tensor([0]), [[12]], [True], logprobs=[[-0.5]])
    assert kept.completion_ids.tolist() == [[12]] and kept.completion_mask.tolist() == [[True]] and kept.logprobs.tolist() == [[-0.5]]
    short = rollouts_from_token_ids(tok, [[10]], torch.tensor([0]), [[12, 13]], [False], logprobs=[[-0.5]])  # one reported of two
    assert short.logprobs[0, 0] == -0.5 and short.logprobs[0, 1].isnan()


def test_rejection_mask_by_hand_token_and_sequence():
    from dynamo_cli.algo.importance import rejection_mask

    # ratios π_old/μ: row 0: 2, 0.5, (masked 9); row 1: 3 (then padding)
    b = _batch()
    token = rejection_mask(**b, level="token", bounds=(0.6, 2.5))
    # 2 in [0.6, 2.5]: kept; 0.5 < 0.6: dropped; the masked one is no policy token: False; 3 > 2.5: dropped
    assert token.tolist() == [[True, False, False], [False, False, False]]
    sequence = rejection_mask(**b, level="sequence", bounds=(0.6, 2.5))
    # row 0's product 2 × 0.5 = 1: every policy token kept; row 1's 3 leaves the bounds: dropped whole
    assert sequence.tolist() == [[True, True, False], [False, False, False]]
    unknown = {**b, "rollout_logprobs": torch.full((2, 3), float("nan"))}
    assert rejection_mask(**unknown, level="token", bounds=(0.6, 2.5)).tolist() == b["mask"].tolist()  # ratio 1: kept


def test_the_masked_term_drops_the_rejected_tokens_and_keeps_the_denominator():
    from dynamo_cli.algo.importance import RolloutCorrected
    from dynamo_cli.algo.terms.base import Loss, Weighted
    from dynamo_cli.algo.terms.ppo_clip import PPOClip
    from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories

    b = _batch()
    batch = Trajectories(input_ids=torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 5, dtype=torch.long),
                         loss_mask=b["mask"], prompt_index=torch.tensor([0, 1]), prompt_width=2, advantages=torch.ones(2, 3),
                         old_logprobs=b["trainer_logprobs"], rollout_logprobs=b["rollout_logprobs"])
    out = ModelOutputs(logprobs=b["trainer_logprobs"].clone())  # PPO ratio 1: each policy token's loss is -A = -1
    term = RolloutCorrected(PPOClip(eps_low=0.2, eps_high=0.28), level="none", cap=2.0, mask_level="token", bounds=(0.6, 2.5))
    per_token, metrics = term(batch, out)
    assert per_token.tolist() == [[-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # only the token with ratio 2 pulls
    assert metrics["rollout_mask_frac"].tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]] and "rollout_is_weight" not in metrics
    # token_mean over the 3 policy tokens: the two dropped ones stay in the denominator, -1 / 3
    loss, logged = Loss(terms=[Weighted(term, 1.0)], mode="token_mean")(batch, out, num_tokens=3, num_sequences=2)
    assert float(loss) == pytest.approx(-1 / 3) and logged["rollout_mask_frac"] == pytest.approx(2 / 3)
    both = RolloutCorrected(PPOClip(eps_low=0.2, eps_high=0.28), level="token", cap=1.5, mask_level="token", bounds=(0.6, 2.5))
    assert both(batch, out)[0].tolist() == [[-1.5, 0.0, 0.0], [0.0, 0.0, 0.0]]  # TIS weight min(2, 1.5) on the kept token


def test_mismatch_statistics_by_hand_and_over_processes():
    from dynamo_cli.algo.importance import mismatch_metrics, mismatch_sums

    b = _batch()  # policy tokens' ratios 2, 0.5, 3
    share = mismatch_sums(**b, is_level="token", cap=2.5, mask_level="none", bounds=(0.6, 2.5))
    kl = [r - 1 - math.log(r) for r in (2.0, 0.5, 3.0)]
    assert share["tokens"] == 3 and share["kl"] == pytest.approx(sum(kl), abs=1e-5)
    assert share["truncated"] == 1 and share["masked"] == 2  # 3 > 2.5 truncated; 0.5 and 3 outside [0.6, 2.5] (token level)
    assert (share["ratio_max"], share["ratio_min"]) == pytest.approx((3.0, 0.5))
    other = {"tokens": 1.0, "kl": 0.5, "truncated": 0.0, "masked": 1.0, "ratio_max": 4.0, "ratio_min": 0.9}  # a second process
    metrics = mismatch_metrics([share, other])
    assert metrics["rollout/mismatch_kl"] == pytest.approx((sum(kl) + 0.5) / 4, abs=1e-6)
    assert (metrics["rollout/mismatch_ratio_max"], metrics["rollout/mismatch_ratio_min"]) == pytest.approx((4.0, 0.5))
    assert metrics["rollout/mismatch_truncated_frac"] == 0.25 and metrics["rollout/mismatch_masked_frac"] == 0.75
    seq = mismatch_sums(**b, is_level="sequence", cap=2.5, mask_level="sequence", bounds=(0.6, 2.5))
    assert seq["truncated"] == 1 and seq["masked"] == 1  # row 1's 3: truncated and outside; row 0's product 1: neither
    assert mismatch_metrics([{**other, "tokens": 0.0}]) == {}


def test_rollout_corrections_run_with_the_hf_engine_and_are_refused_where_not_comparable():
    from helpers import compose_schema

    from dynamo_cli.algo.importance import RolloutCorrected
    from dynamo_cli.algo.terms.base import build_loss
    from dynamo_cli.config.base import ConfigError

    for overrides in (["algorithm.rollout_is=token"], ["algorithm.rollout_mask=sequence"],
                      ["algorithm.rollout_is=sequence", "algorithm.rollout_mask=token", "rollout=vllm"]):
        term = build_loss(compose_schema("train", overrides)).terms[0].term
        assert isinstance(term, RolloutCorrected)
    assert not isinstance(build_loss(compose_schema("train", [])).terms[0].term, RolloutCorrected)  # off by default
    with pytest.raises(ConfigError, match="algorithm.rollout_is='both' is not allowed; choose one of: none, token, sequence"):
        compose_schema("train", ["algorithm.rollout_is=both"])
    with pytest.raises(ConfigError, match=r"algorithm.rollout_mask_bounds=\[1.5, 2.0\] must be \[lo, hi\] with 0 < lo <= 1 <= hi"):
        compose_schema("train", ["algorithm.rollout_mask=token", "algorithm.rollout_mask_bounds=[1.5,2.0]"])
    with pytest.raises(ConfigError, match="algorithm.rollout_mask=token with rollout.temperature=0.7 and rollout.top_p=0.9: vLLM"):
        compose_schema("train", ["rollout=vllm", "algorithm.rollout_mask=token", "rollout.temperature=0.7", "rollout.top_p=0.9"])
    with pytest.raises(ConfigError, match="algorithm.rollout_is=token with task=guess: a multi-turn episode"):
        compose_schema("train", ["task=guess", "algorithm.rollout_is=token"])


def test_vllm_logprobs_mode_compares_like_with_like():
    from dynamo_cli.config.rollout import vllm_logprobs_mode

    assert vllm_logprobs_mode(temperature=1.0, top_p=0.9) == "raw_logprobs"  # before temperature (1) and before top-p
    assert vllm_logprobs_mode(temperature=0.7, top_p=1.0) == "processed_logprobs"  # after temperature; top-p does nothing
    assert vllm_logprobs_mode(temperature=0.7, top_p=0.9) is None  # raw lacks the temperature, processed has top-p


def test_the_engines_log_probs_reach_the_batch_and_survive_merging_and_trimming():
    from dynamo_cli.models.load import build_char_tokenizer
    from dynamo_cli.rollout.hf import rollouts_from_token_ids
    from dynamo_cli.rollout.padding import trim_padding
    from dynamo_cli.rollout.trajectory import Trajectories
    from dynamo_cli.stages.collect import merge_rollouts

    tok = build_char_tokenizer()
    one = rollouts_from_token_ids(tok, [[10, 11]], torch.tensor([0]), [[12, 13, 14]], [False], logprobs=[[-1.0, -2.0, -3.0]])
    two = rollouts_from_token_ids(tok, [[10]], torch.tensor([0]), [[15]], [False], logprobs=[[-0.5]])
    batch = Trajectories.from_rollouts(merge_rollouts([one, two], pad_id=tok.pad_token_id))
    assert batch.rollout_logprobs.tolist() == [[-1.0, -2.0, -3.0], [-0.5, 0.0, 0.0]]  # a round's rows, right-padded
    trimmed = trim_padding(batch.select(torch.tensor([1])))  # the second row alone: one response column
    assert trimmed.rollout_logprobs.tolist() == [[-0.5]] and trimmed.loss_mask.shape == trimmed.rollout_logprobs.shape
