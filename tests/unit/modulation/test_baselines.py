"""The paper's token-level baselines (Fork Tokens, Entropy Advantages, Clip-Cov, KL-Cov), W-REINFORCE and DAPO's
overlong handling: pure functions against hand-worked values, then the pieces in their stage."""
from __future__ import annotations

import math

import pytest
import torch

from dynamo_cli.algo.advantages.w_reinforce import w_reinforce_advantages
from dynamo_cli.algo.reward_shaping import OverlongPenalty, overlong_penalty
from dynamo_cli.algo.terms.base import Loss, Weighted
from dynamo_cli.algo.terms.ppo_clip import PPOClip
from dynamo_cli.modulation.base import token_covariance
from dynamo_cli.modulation.clip_cov import ClipCovModulator, clip_cov_select
from dynamo_cli.modulation.entropy_advantage import EntropyAdvantageModulator, entropy_advantage
from dynamo_cli.modulation.fork_tokens import ForkTokensModulator, top_fraction_mask
from dynamo_cli.modulation.kl_cov import KLCovModulator, kl_cov_select
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ Fork Tokens
def test_top_fraction_keeps_the_top_20_percent_and_ignores_padding():
    # valid entropies 0..9 (the padded 100s must not count): quantile 0.8 = 7 + 0.2 * (8 - 7) = 7.2 -> keep 8 and 9
    entropy = torch.tensor([[0.0, 1, 2, 3, 4, 100], [5, 6, 7, 8, 9, 100]])
    mask = torch.tensor([[True] * 5 + [False]] * 2)
    keep = top_fraction_mask(values=entropy, mask=mask, fraction=0.2)
    assert keep.tolist() == [[False] * 6, [False, False, False, True, True, False]]
    assert not top_fraction_mask(values=entropy, mask=torch.zeros_like(mask), fraction=0.2).any()


def test_fork_tokens_modulator_drops_the_low_entropy_tokens_from_the_loss():
    advantages = torch.tensor([[1.0] * 5, [-1.0] * 5])
    entropy = torch.arange(10.0).view(2, 5)
    shaping = ForkTokensModulator(top_fraction=0.2)(advantages=advantages, mask=torch.ones(2, 5, dtype=torch.bool),
                                                    entropy=entropy)
    assert shaping.loss_mask.tolist() == [[False] * 5, [False, False, False, True, True]]
    close(shaping.advantages, [[0.0] * 5, [0.0, 0.0, 0.0, -1.0, -1.0]])
    assert shaping.metrics == {"mod/kept_frac": 0.2} and ForkTokensModulator.needs_policy_stats


# ----------------------------------------------------------------------------- Entropy Advantages
def test_entropy_advantage_hand_values():
    # alpha 0.4, kappa 2:  A=1,  H=0.5 -> min(0.2, 0.5) = 0.2  -> 1.2
    #                      A=1,  H=3   -> min(1.2, 0.5) = 0.5  -> 1.5  (capped at |A|/kappa)
    #                      A=-.5, H=1  -> min(0.4, 0.25) = .25 -> -0.25 (never flips the sign)
    #                      A=0,  H=2   -> min(0.8, 0) = 0      -> 0;  padding -> 0
    advantages = torch.tensor([[1.0, 1.0, 7.0], [-0.5, 0.0, 7.0]])
    entropy = torch.tensor([[0.5, 3.0, 9.0], [1.0, 2.0, 9.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    close(entropy_advantage(advantages=advantages, entropy=entropy, mask=mask, alpha=0.4, kappa=2.0),
          [[1.2, 1.5, 0.0], [-0.25, 0.0, 0.0]])
    shaping = EntropyAdvantageModulator(alpha=0.4, kappa=2.0)(advantages=advantages, mask=mask, entropy=entropy)
    assert torch.equal(shaping.loss_mask, mask)
    assert math.isclose(shaping.metrics["mod/entropy_bonus_mean"], (0.2 + 0.5 + 0.25 + 0.0) / 4, rel_tol=1e-6)
    assert shaping.metrics["mod/entropy_bonus_capped_frac"] == 0.75  # all but the first token hit |A|/kappa


# ------------------------------------------------------------------------------ Clip-Cov, KL-Cov
# A = [[2, 2], [-2, -2]] (mean 0), log pi = [[-1, -3], [-1, -4]] (mean -2.25): deviations 1.25, -0.75, 1.25, -1.75
# covariance = [[2 * 1.25, 2 * -0.75], [-2 * 1.25, -2 * -1.75]] = [[2.5, -1.5], [-2.5, 3.5]]
A = torch.tensor([[2.0, 2.0, 0.0], [-2.0, -2.0, 0.0]])
LOGP = torch.tensor([[-1.0, -3.0, 50.0], [-1.0, -4.0, 50.0]])  # the padded 50s must not enter the means
MASK = torch.tensor([[True, True, False], [True, True, False]])
COV = [[2.5, -1.5, 0.0], [-2.5, 3.5, 0.0]]


def test_token_covariance_hand_values():
    close(token_covariance(advantages=A, logprobs=LOGP, mask=MASK), COV)


def test_kl_cov_selects_the_highest_covariance_tokens():
    cov = torch.tensor(COV)
    # k = max(1, int(2e-4 * 4)) = 1 -> the 3.5;  k = int(0.5 * 4) = 2 -> 3.5 and 2.5
    assert kl_cov_select(covariance=cov, mask=MASK, fraction=2e-4).tolist() == [[False] * 3, [False, True, False]]
    assert kl_cov_select(covariance=cov, mask=MASK, fraction=0.5).tolist() == [[True, False, False], [False, True, False]]


def test_clip_cov_draws_from_the_band_only_and_replays_with_its_generator():
    cov = torch.tensor(COV)  # band (1, 5): the 2.5 and the 3.5
    picks = set()
    for seed in range(20):
        chosen = clip_cov_select(covariance=cov, candidates=MASK, fraction=2e-4, low=1.0, high=5.0, num_valid=4,
                                 generator=torch.Generator().manual_seed(seed))
        assert int(chosen.sum()) == 1  # max(1, int(2e-4 * 4))
        picks.add(tuple(chosen.nonzero()[0].tolist()))
    assert picks == {(0, 0), (1, 1)}
    again = [clip_cov_select(covariance=cov, candidates=MASK, fraction=2e-4, low=1.0, high=5.0, num_valid=4,
                             generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(*again)
    both = clip_cov_select(covariance=cov, candidates=MASK, fraction=0.5, low=1.0, high=5.0, num_valid=4,
                           generator=torch.Generator().manual_seed(0))
    assert both.tolist() == [[True, False, False], [False, True, False]]


def test_clip_cov_modulator_never_detaches_a_token_ppo_already_clips():
    # (1, 1): A = -2 and ratio exp(-4 - (-3)) = 0.37 < 1 - 0.2: clipped by PPO, so only (0, 0) is left in the band
    old = LOGP.clone()
    old[1, 1] = -3.0
    modulator = ClipCovModulator(fraction=2e-4, cov_low=1.0, cov_high=5.0, eps_low=0.2, eps_high=0.28)
    shaping = modulator(advantages=A, mask=MASK, entropy=torch.ones(2, 3), logprobs=LOGP, old_logprobs=old,
                        generator=torch.Generator().manual_seed(0))
    assert shaping.loss_mask.tolist() == [[False, True, False], [True, True, False]]
    close(shaping.advantages, [[0.0, 2.0, 0.0], [-2.0, -2.0, 0.0]])
    assert shaping.metrics["mod/detached_frac"] == 0.25
    with pytest.raises(ValueError, match="generator"):
        modulator(advantages=A, mask=MASK, entropy=torch.ones(2, 3), logprobs=LOGP, old_logprobs=old)


def test_kl_cov_penalty_acts_on_the_selected_tokens_only():
    # selected: (1, 1) (covariance 3.5). New log pi there -4.5 vs old -4 -> |log ratio| 0.5, elsewhere 0 (masked out)
    #   token mean over the 4 valid tokens: 0.5 / 4 = 0.125, weight beta = 2 -> 0.25 added to the loss
    modulator = KLCovModulator(fraction=2e-4, coef=2.0)
    shaping = modulator(advantages=A, mask=MASK, entropy=torch.ones(2, 3), logprobs=LOGP, old_logprobs=LOGP)
    assert shaping.extra_mask.tolist() == [[False] * 3, [False, True, False]] and torch.equal(shaping.loss_mask, MASK)
    close(shaping.advantages, A.tolist())
    new = LOGP.clone()
    new[1, 1], new[0, 0] = -4.5, -2.0  # (0, 0) moves too, but is not selected
    batch = Trajectories(input_ids=torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 4, dtype=torch.long),
                         loss_mask=MASK, prompt_index=torch.tensor([0, 0]), prompt_width=1, advantages=A,
                         old_logprobs=LOGP, extra_mask=shaping.extra_mask)
    value, metrics = Loss(terms=[], mode="token_mean")(batch, ModelOutputs(logprobs=new), num_tokens=4, num_sequences=2,
                                                       extra=shaping.extra_terms)
    assert math.isclose(value.item(), 0.25, rel_tol=1e-6) and math.isclose(metrics["kl_cov"], 0.125, rel_tol=1e-6)


def test_the_update_loop_hands_the_extra_mask_to_the_micro_batches():
    """KL-Cov through PolicyUpdate: the selected tokens travel with their rows into every micro-batch."""
    from dynamo_cli.config.model import TinyModelConfig
    from dynamo_cli.models.load import build_char_tokenizer, build_tiny_model
    from dynamo_cli.models.trainable import Trainable
    from dynamo_cli.runtime.distributed import DataParallel
    from dynamo_cli.stages.update import PolicyUpdate

    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), build_char_tokenizer())
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    rows = 6
    ids = torch.randint(4, 40, (rows, 6), generator=torch.Generator().manual_seed(0))
    b = Trajectories(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=torch.ones(rows, 4, dtype=torch.bool),
                     prompt_index=torch.zeros(rows, dtype=torch.long), prompt_width=2,
                     advantages=torch.randn(rows, 1, generator=torch.Generator().manual_seed(1)).expand(rows, 4).clone(),
                     old_logprobs=torch.full((rows, 4), -3.0), old_entropy=torch.ones(rows, 4))
    update = PolicyUpdate(trainables=[Trainable("policy", model, optimizer, scheduler, grad_clip=1.0)],
                          loss=Loss(terms=[Weighted(PPOClip(eps_low=0.2, eps_high=0.28), 1.0)], mode="token_mean"),
                          modulator=KLCovModulator(fraction=0.25, coef=1.0),
                          dp=DataParallel.start("cpu"), ppo_epochs=1, mini_batches=2, micro_batch_size=2,
                          modulator_scope="mini_batch", temperature=1.0, reuse_forward=False)
    metrics, _ = update(b, generator=torch.Generator().manual_seed(0), step=1)
    assert metrics["train/kl_cov"] > 0 and metrics["mod/penalised_frac"] == 0.25  # int(0.25 * 12) = 3 of 12 tokens


# ----------------------------------------------------------------------------------- W-REINFORCE
def test_w_reinforce_hand_values():
    # rewards 1, 0, 1, 0.5 -> s = 2r - 1 = 1, -1, 1, 0 -> A = 0.1 * 1, -1, 0.1 * 1, 0; no baseline, no group
    adv, zero = w_reinforce_advantages(rewards=torch.tensor([1.0, 0.0, 1.0, 0.5]), group_index=torch.tensor([0, 0, 1, 1]),
                                       num_groups=2, positive_weight=0.1)
    close(adv, [0.1, -1.0, 0.1, 0.0])
    assert not zero.any()  # the all-correct group 1 still carries +0.1


# ----------------------------------------------------------------------------------- DAPO overlong
def test_overlong_penalty_hand_values():
    # L_max 10, L_cache 4 -> the buffer starts after 6 tokens: 5, 6 -> 0; 7 -> (6 - 7) / 4 = -0.25; 9 -> -0.75;
    # 10 -> -1 (at L_max); 12 -> -1 (beyond)
    close(overlong_penalty(lengths=torch.tensor([5, 6, 7, 9, 10, 12]), max_length=10, buffer=4),
          [0.0, 0.0, -0.25, -0.75, -1.0, -1.0])
    shaped, metrics = OverlongPenalty(factor=0.5, max_length=10, buffer=4)(torch.ones(6), lengths=torch.tensor([5, 6, 7, 9, 10, 12]))
    close(shaped, [1.0, 1.0, 0.875, 0.625, 0.5, 0.5])
    assert math.isclose(metrics["rollout/overlong_penalised_frac"], 4 / 6, rel_tol=1e-6)
    rewards = torch.tensor([1.0, 0.0])
    off, metrics = OverlongPenalty(factor=0.0, max_length=10, buffer=4)(rewards, lengths=torch.tensor([12, 12]))
    assert off is rewards and metrics == {}  # off: the rewards exactly as they were


def test_collect_masks_truncated_completions_and_shapes_the_rewards_it_learns_from():
    from dynamo_cli.allocation.uniform import UniformAllocator
    from dynamo_cli.config.model import TinyModelConfig
    from dynamo_cli.models.load import build_char_tokenizer, build_tiny_model
    from dynamo_cli.rollout.hf import PolicyRollouts
    from dynamo_cli.runtime.distributed import DataParallel
    from dynamo_cli.sampling.uniform import UniformSampler
    from dynamo_cli.stages.collect import Collector
    from dynamo_cli.tasks.math import MathTask

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tokenizer)
    task = MathTask(seed=1, num_train=40, num_test_per_level=2, levels=["L1"], format="plain")
    shaping = OverlongPenalty(factor=1.0, max_length=3, buffer=1)  # 3 tokens, the last one in the buffer: -1 at 3

    def collect(mask_truncated: bool):
        return Collector(task=task, problems=task.train_problems(), tokenizer=tokenizer, sampler=UniformSampler(seed=0),
                         allocator=UniformAllocator(n=4, explore_min_attempts=4, decay=1.0), engine=PolicyRollouts(model, tokenizer),
                         policy=model, reference=None, dp=DataParallel.start("cpu"), per_step=4, seed=0, max_new_tokens=3,
                         temperature=1.0, top_p=1.0, generation_batch=16, logprob_batch=16, mask_truncated=mask_truncated,
                         shape_rewards=shaping)(1)

    kept, masked = collect(False), collect(True)
    finished = masked.rollouts.finished
    assert (~finished).any(), "the random tiny policy should run into the 3-token limit"
    assert torch.equal(kept.batch.loss_mask, kept.rollouts.completion_mask)
    assert not masked.batch.loss_mask[~finished].any()
    assert torch.equal(masked.batch.loss_mask[finished], masked.rollouts.completion_mask[finished])
    lengths = masked.rollouts.completion_lengths
    close(masked.train_rewards, (masked.rewards + overlong_penalty(lengths=lengths, max_length=3, buffer=1)).tolist())
    assert torch.equal(masked.rewards, kept.rewards)  # the verifier's rewards, for the allocator and logs, are untouched
