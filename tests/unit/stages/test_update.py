"""stages/update.py where options meet: the denominators of the loss, the policy term's own mask, group_mean's
weights, the current policy's statistics under one_step_off_policy, and modulation from the training forward."""
from __future__ import annotations

import math

import pytest
import torch

from dynamo_cli.algo.terms.base import Loss, Weighted
from dynamo_cli.algo.terms.kl import ReferenceKL
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
from dynamo_cli.stages.update import PolicyUpdate

PROMPT, RESPONSE = 2, 4


def tiny():
    torch.manual_seed(0)
    return build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), build_char_tokenizer())


def rows(ids: torch.Tensor, *, prompt_index, advantages, loss_mask=None, model=None) -> Trajectories:
    """A batch over `ids` (n, PROMPT + RESPONSE) whose old statistics are `model`'s own (an on-policy step)."""
    n = ids.shape[0]
    mask = torch.ones(n, RESPONSE, dtype=torch.bool) if loss_mask is None else loss_mask
    b = Trajectories(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=mask, prompt_index=torch.tensor(prompt_index),
                     prompt_width=PROMPT, advantages=torch.tensor(advantages, dtype=torch.float32)[:, None].expand(n, RESPONSE).clone())
    logprobs, entropy = batched_token_stats(model, input_ids=ids, attention_mask=torch.ones_like(ids), prompt_width=PROMPT,
                                            temperature=1.0, micro_batch_size=64)
    return b.replace(old_logprobs=logprobs, old_entropy=entropy, ref_logprobs=logprobs - 0.5)


def update_of(model, *, loss: Loss, modulator=None, scope="mini_batch", mini_batches=1, micro_batch_size=64, off_policy=False,
              lr=0.1) -> PolicyUpdate:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return PolicyUpdate(trainables=[Trainable("policy", model, optimizer, scheduler, grad_clip=0.0)], loss=loss,
                        modulator=modulator or NoModulator(), dp=DataParallel.start("cpu"), ppo_epochs=1, mini_batches=mini_batches,
                        micro_batch_size=micro_batch_size, modulator_scope=scope, temperature=1.0, reuse_forward=False,
                        off_policy=off_policy)


def weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def ids_of(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 40, (n, PROMPT + RESPONSE), generator=torch.Generator().manual_seed(seed))


def pg(mode: str) -> Loss:
    return Loss(terms=[Weighted(PPOClip(eps_low=0.2, eps_high=0.28), 1.0)], mode=mode)


@pytest.mark.parametrize("mode", ["seq_mean", "seq_mean_token_sum_norm", "group_mean"])
def test_rows_without_loss_tokens_do_not_shrink_the_gradient(mode):
    """Two rows that carry loss, then the same two plus two rows DAPO dropped (empty loss mask): one SGD step must land
    on the same weights. Dividing by all 4 rows halved the step (the kept share, which changes every step)."""
    ids = ids_of(4)
    start = tiny()
    kept = rows(ids[:2], prompt_index=[0, 1], advantages=[1.0, -1.0], model=start)
    dropped = torch.zeros(2, RESPONSE, dtype=torch.bool)
    padded = rows(ids, prompt_index=[0, 1, 0, 1], advantages=[1.0, -1.0, 1.0, 1.0], model=start,
                  loss_mask=torch.cat([torch.ones(2, RESPONSE, dtype=torch.bool), dropped]))
    a, b = tiny(), tiny()
    loss = pg(mode)
    loss.max_length = RESPONSE
    update_of(a, loss=loss)(kept, generator=torch.Generator().manual_seed(0), step=1)
    update_of(b, loss=loss)(padded, generator=torch.Generator().manual_seed(0), step=1)
    moved = weights(a) - weights(start)
    assert moved.abs().max() > 1e-4
    torch.testing.assert_close(weights(b) - weights(start), moved, rtol=1e-4, atol=1e-7)


def test_group_mean_weighs_every_prompt_the_same_however_many_rollouts_it_got():
    """group_mean: prompt 0 with rows (x, y) and prompt 1 with row z gives the step that prompt 0 with (x, y, x, y) does:
    more rollouts of a prompt sharpen its estimate, they do not weigh it more. seq_mean moves further toward prompt 0."""
    ids = ids_of(3, seed=1)
    start = tiny()
    few = rows(ids, prompt_index=[0, 0, 1], advantages=[1.0, -1.0, 1.0], model=start)
    many_ids = torch.cat([ids[:2], ids[:2], ids[2:]])
    many = rows(many_ids, prompt_index=[0, 0, 0, 0, 1], advantages=[1.0, -1.0, 1.0, -1.0, 1.0], model=start)
    results = {}
    for mode in ("group_mean", "seq_mean"):
        a, b = tiny(), tiny()
        update_of(a, loss=pg(mode))(few, generator=torch.Generator().manual_seed(0), step=1)
        update_of(b, loss=pg(mode))(many, generator=torch.Generator().manual_seed(0), step=1)
        results[mode] = (weights(a) - weights(start), weights(b) - weights(start))
    torch.testing.assert_close(*results["group_mean"], rtol=1e-4, atol=1e-7)
    assert not torch.allclose(*results["seq_mean"], rtol=1e-3, atol=1e-6)


def test_a_token_the_modulator_drops_still_takes_its_kl():
    """Fork Tokens keeps the top half of the tokens by entropy for the policy gradient; the KL to the reference is
    still the mean over every loss token. Over the kept half only it was the mean of another set of tokens, and the
    entropy bonus and value loss were cut the same way."""
    ids = ids_of(4, seed=2)
    model = tiny()
    b = rows(ids, prompt_index=[0, 0, 1, 1], advantages=[1.0, -1.0, 1.0, -1.0], model=model)
    loss = Loss(terms=[Weighted(PPOClip(eps_low=0.2, eps_high=0.28), 1.0), Weighted(ReferenceKL(), 0.1)], mode="token_mean")
    metrics, _ = update_of(model, loss=loss, modulator=ForkTokensModulator(top_fraction=0.5), lr=0.0)(
        b, generator=torch.Generator().manual_seed(0), step=1)
    assert 0.4 < metrics["mod/kept_frac"] < 0.6
    # ref = old - .5 and the policy has not moved (lr 0): d = -.5 on every token, k3 = e^-.5 + .5 - 1
    assert metrics["train/kl_ref"] == pytest.approx(math.exp(-0.5) - 0.5, rel=1e-5)


def test_off_policy_modulation_reads_the_current_policy_even_in_the_first_mini_batch():
    """Under one_step_off_policy the batch's old statistics are the behaviour copy's (θ_{t-2}); the update starts from
    θ_{t-1}. Here the stale entropies are all 1 (no spread: β_comp would be 1 everywhere, nothing boosted) while the
    current policy's vary: the modulator must see the current ones."""
    ids = ids_of(4, seed=3)
    model = tiny()
    b = rows(ids, prompt_index=[0, 0, 1, 1], advantages=[1.0, -1.0, 1.0, -1.0], model=model)
    stale = b.replace(old_entropy=torch.ones_like(b.old_entropy), old_logprobs=b.old_logprobs - 0.1)
    dynamo = DynamoModulator(compensate=True, stabilise=True, mu_max=1.2, lambda_min=0.6, gamma=50.0, tau=0.99, eps_low=0.2, eps_high=0.28)
    on, _ = update_of(tiny(), loss=pg("token_mean"), modulator=dynamo, lr=0.0)(stale, generator=torch.Generator().manual_seed(0), step=1)
    off, _ = update_of(tiny(), loss=pg("token_mean"), modulator=dynamo, lr=0.0, off_policy=True)(
        stale, generator=torch.Generator().manual_seed(0), step=1)
    assert on["mod/boosted_frac"] == 0.0  # on-policy the first mini-batch takes the batch's own statistics (here: stale)
    assert off["mod/boosted_frac"] > 0.2  # off-policy: the current policy's, which spread


def test_micro_batch_scope_modulates_from_the_training_forward_without_another_pass():
    """scope=micro_batch: forwards = micro-batches (one per loss). scope=mini_batch: every mini-batch after the first
    also runs a no-grad pass over its rows first (2 mini-batches x 2 micro-batches: 4 + 2). The factors agree: the same
    weights give the same entropies and log-probs, whichever forward computes them."""
    ids = ids_of(8, seed=4)
    dynamo = DynamoModulator(compensate=True, stabilise=True, mu_max=1.2, lambda_min=0.6, gamma=50.0, tau=0.99, eps_low=0.2, eps_high=0.28)
    calls = {}
    for scope in ("micro_batch", "mini_batch"):
        model = tiny()
        b = rows(ids, prompt_index=[0, 0, 1, 1, 2, 2, 3, 3], advantages=[1.0, -1.0] * 4, model=model)
        forwards = []
        model.register_forward_hook(lambda *_, seen=forwards: seen.append(1))
        update_of(model, loss=pg("token_mean"), modulator=dynamo, scope=scope, mini_batches=2, micro_batch_size=2)(
            b, generator=torch.Generator().manual_seed(0), step=1)
        calls[scope] = len(forwards)
    assert calls == {"micro_batch": 4, "mini_batch": 6}
