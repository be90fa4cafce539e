"""algorithm.reuse_forward: the rollout policy's log-probs and entropies read off the first training forward give
the same update as the separate pass collect ran before (stages/rollout_stats.py)."""
from __future__ import annotations

import copy

import pytest
import torch

from dynamo_cli.algo.terms.base import Loss, Weighted
from dynamo_cli.algo.terms.entropy import EntropyBonus
from dynamo_cli.algo.terms.ppo_clip import PPOClip
from dynamo_cli.config.model import TinyModelConfig
from dynamo_cli.models.load import build_char_tokenizer, build_tiny_model
from dynamo_cli.models.trainable import Trainable
from dynamo_cli.modulation.dynamo import DynamoModulator
from dynamo_cli.modulation.fork_tokens import ForkTokensModulator
from dynamo_cli.modulation.none import NoModulator
from dynamo_cli.rollout.policy_stats import batched_token_stats
from dynamo_cli.rollout.trajectory import Trajectories
from dynamo_cli.runtime.distributed import DataParallel
from dynamo_cli.stages import rollout_stats
from dynamo_cli.stages.update import PolicyUpdate

ROWS, PROMPT, RESPONSE = 8, 3, 5


def tiny():
    return build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), build_char_tokenizer())


def rollouts() -> Trajectories:
    """8 rows: prompts left-padded (row r has r % 3 pad columns), responses right-padded (row r is 5 - r % 4 long)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 40, (ROWS, PROMPT + RESPONSE), generator=g)
    attention = torch.ones_like(ids)
    lengths = torch.tensor([RESPONSE - r % 4 for r in range(ROWS)])
    loss_mask = torch.arange(RESPONSE)[None, :] < lengths[:, None]  # (8, 5)
    for r in range(ROWS):
        attention[r, : r % 3] = 0
        attention[r, PROMPT:][~loss_mask[r]] = 0
    advantages = torch.randn(ROWS, generator=g)[:, None] * loss_mask
    return Trajectories(input_ids=ids, attention_mask=attention, loss_mask=loss_mask, prompt_index=torch.arange(ROWS) // 4,
                        prompt_width=PROMPT, advantages=advantages)


def run(modulator, *, reuse: bool, ppo_epochs: int, mini_batches: int, micro_batch_size: int, entropy_coef: float):
    model = tiny()
    batch = rollouts()
    calls = []
    model.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    if reuse:
        batch = rollout_stats.deferred(batch)
    else:  # what collect computes today
        old_logprobs, old_entropy = batched_token_stats(model, input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                                        prompt_width=PROMPT, temperature=0.7, micro_batch_size=micro_batch_size)
        batch = batch.replace(old_logprobs=old_logprobs, old_entropy=old_entropy)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    terms = [Weighted(PPOClip(eps_low=0.2, eps_high=0.28), 1.0), Weighted(EntropyBonus(), -entropy_coef)]
    update = PolicyUpdate(trainables=[Trainable("policy", model, optimizer, scheduler, grad_clip=1.0)],
                          loss=Loss(terms=terms, mode="token_mean"), modulator=modulator, dp=DataParallel.start("cpu"),
                          ppo_epochs=ppo_epochs, mini_batches=mini_batches, micro_batch_size=micro_batch_size,
                          modulator_scope="mini_batch", temperature=0.7, reuse_forward=reuse)
    metrics, distributions = update(batch, generator=torch.Generator().manual_seed(1), step=1)
    return metrics, distributions, batch, list(model.parameters()), sum(calls)


def dynamo():
    return DynamoModulator(compensate=True, stabilise=True, mu_max=1.2, lambda_min=0.6, gamma=50.0, tau=0.99, eps_low=0.2, eps_high=0.28)


# (modulator, ppo_epochs, mini_batches, micro_batch_size, entropy_coef, rows the separate pass still covers)
CASES = {
    "grpo one update": (NoModulator, 1, 1, 4, 0.0, 0),  # no pass at all; the first mini-batch spans 2 micro-batches
    "dynamo one update": (dynamo, 1, 1, 8, 0.01, 0),  # the modulator shapes after the one forward
    "grpo 2x2": (NoModulator, 2, 2, 2, 0.01, 4),  # the pass covers the second mini-batch only
    "fork tokens 1x2": (lambda: ForkTokensModulator(top_fraction=0.5), 1, 2, 4, 0.0, 4),
    "dynamo 2x2, 2 micro-batches": (dynamo, 2, 2, 2, 0.01, 8),  # shaping before the loss: the pass covers every row
}


@pytest.mark.parametrize("case", CASES)
def test_reusing_the_first_forward_gives_the_separate_pass_update(case):
    make, epochs, mini_batches, micro, entropy_coef, pass_rows = CASES[case]
    kw = dict(ppo_epochs=epochs, mini_batches=mini_batches, micro_batch_size=micro, entropy_coef=entropy_coef)
    old_metrics, old_dist, old_batch, old_params, old_rows = run(make(), reuse=False, **kw)
    new_metrics, new_dist, new_batch, new_params, new_rows = run(make(), reuse=True, **kw)

    mask = old_batch.loss_mask
    torch.testing.assert_close(new_batch.old_logprobs[mask], old_batch.old_logprobs[mask], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(new_batch.old_entropy[mask], old_batch.old_entropy[mask], rtol=1e-5, atol=1e-6)
    assert not new_batch.old_logprobs.isnan().any() and not new_batch.old_entropy.isnan().any()  # every row filled
    timing = {"time/modulate_s"}
    assert set(new_metrics) == set(old_metrics)
    for key in set(old_metrics) - timing:
        assert new_metrics[key] == pytest.approx(old_metrics[key], rel=1e-4, abs=1e-6), key
    assert new_metrics["train/loss"] != 0 and new_metrics["train/grad_norm"] > 0
    for key in old_dist:
        torch.testing.assert_close(new_dist[key], old_dist[key], rtol=1e-4, atol=1e-6)
    for new, old in zip(new_params, old_params, strict=True):
        torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-6)
    # the forwards' rows: the separate pass covered all 8 rows, the reused path only `pass_rows` of them
    assert old_rows - new_rows == ROWS - pass_rows


def test_deferred_statistics_are_nan_until_the_update_writes_them():
    batch = rollout_stats.deferred(rollouts())
    assert batch.old_logprobs.shape == batch.old_entropy.shape == (ROWS, RESPONSE)
    assert batch.old_logprobs.isnan().all() and batch.old_entropy.isnan().all()
    rows = torch.tensor([1, 6])
    rollout_stats.record(batch, rows, logprobs=torch.full((2, RESPONSE), -1.5), entropy=torch.full((2, RESPONSE), 0.25))
    assert (batch.old_logprobs[rows] == -1.5).all() and (batch.old_entropy[rows] == 0.25).all()
    assert batch.old_logprobs[[0, 2, 3, 4, 5, 7]].isnan().all()


def test_the_separate_pass_stays_where_reuse_would_not_be_exact():
    model = tiny()
    assert rollout_stats.separate_pass_reason(reuse_forward=True, estimator_reads_old_logprobs=False, model=model) is None
    assert "reuse_forward=false" in rollout_stats.separate_pass_reason(reuse_forward=False, estimator_reads_old_logprobs=False,
                                                                        model=model)
    assert "kl_in_reward" in rollout_stats.separate_pass_reason(reuse_forward=True, estimator_reads_old_logprobs=True, model=model)
    dropped = copy.deepcopy(model)
    dropped.config.attention_dropout = 0.1  # HF attention applies it functionally in train mode
    assert "attention_dropout" in rollout_stats.separate_pass_reason(reuse_forward=True, estimator_reads_old_logprobs=False,
                                                                      model=dropped)
    dropped = copy.deepcopy(model)
    dropped.model.extra = torch.nn.Dropout(0.05)  # e.g. LoRA's lora_dropout
    assert "model.extra" in rollout_stats.separate_pass_reason(reuse_forward=True, estimator_reads_old_logprobs=False, model=dropped)
