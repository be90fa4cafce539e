"""The step's stages and their parts: loss terms, the Loss aggregation, estimate, update's mini-batch split,
the sampler, trajectories, and the registries behind every config group."""
from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_dir

from dynamo_cli.algo.advantages.base import GroupEstimator
from dynamo_cli.algo.advantages.grpo import grpo_advantages
from dynamo_cli.algo.reward_shaping import OverlongPenalty
from dynamo_cli.algo.terms.base import Loss, Weighted, build_loss
from dynamo_cli.algo.terms.entropy import EntropyBonus
from dynamo_cli.algo.terms.kl import ReferenceKL
from dynamo_cli.algo.terms.ppo_clip import PPOClip
from dynamo_cli.cli import CONF_DIR, register_resolvers, to_schema
from dynamo_cli.config.model import TinyModelConfig
from dynamo_cli.config.store import register_schemas
from dynamo_cli.recipes import parts
from dynamo_cli.registry import Registry
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories
from dynamo_cli.sampling.uniform import UniformSampler

register_schemas()
register_resolvers()


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_schema(compose(config_name="train", overrides=overrides))


def batch(**fields) -> Trajectories:
    # 2 rows, 3 response positions; row 1's last position is padding
    mask = torch.tensor([[True, True, True], [True, True, False]])
    base = dict(input_ids=torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 4, dtype=torch.long),
                loss_mask=mask, prompt_index=torch.tensor([0, 0]), prompt_width=1)
    return Trajectories(**{**base, **fields})


# ----------------------------------------------------------------------------------------- terms
def test_loss_weights_and_aggregates_each_term_by_token_mean():
    # policy: old = new log-probs -> ratio 1 -> per-token loss -A; A = [[1, 1, 1], [-2, -2, x]]
    #   token mean over 5 tokens: (-1 -1 -1 +2 +2) / 5 = 0.2
    # kl: ref = logp - 1 -> d = -1 -> e^-1 + 1 - 1 = 0.36788 on every token; mean 0.36788, weight 0.1
    # entropy: 2.0 on every token; mean 2.0, weight -0.5 (a bonus) -> total 0.2 + 0.036788 - 1.0
    logprobs = torch.full((2, 3), -1.0)
    b = batch(advantages=torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, 99.0]]), old_logprobs=logprobs.clone(),
              ref_logprobs=logprobs - 1)
    out = ModelOutputs(logprobs=logprobs, entropy=torch.full((2, 3), 2.0))
    loss = Loss(terms=[Weighted(PPOClip(eps_low=0.2, eps_high=0.28), 1.0), Weighted(ReferenceKL(), 0.1),
                       Weighted(EntropyBonus(), -0.5)], mode="token_mean")
    value, metrics = loss(b, out, num_tokens=5, num_sequences=2)
    assert math.isclose(value.item(), 0.2 + 0.1 * math.exp(-1) - 1.0, rel_tol=1e-6)
    assert math.isclose(metrics["pg_loss"], 0.2, rel_tol=1e-6)
    assert math.isclose(metrics["kl_ref"], math.exp(-1), rel_tol=1e-6)
    assert metrics["entropy_bonus"] == 2.0 and metrics["clip_frac"] == 0.0 and metrics["approx_kl"] == 0.0
    assert math.isclose(metrics["loss"], value.item())


def test_a_term_with_weight_zero_is_never_computed_but_still_logged():
    def explode(batch, out):
        raise AssertionError("a weight-0 term must not run")

    class Off:
        name, needs = "off_term", frozenset({"entropy"})
        __call__ = staticmethod(explode)

    b = batch(advantages=torch.ones(2, 3), old_logprobs=torch.zeros(2, 3))
    loss = Loss(terms=[Weighted(PPOClip(eps_low=0.2, eps_high=0.2), 1.0), Weighted(Off(), 0.0)], mode="seq_mean")
    _, metrics = loss(b, ModelOutputs(logprobs=torch.zeros(2, 3)), num_tokens=5, num_sequences=2)
    assert "off_term" not in metrics and "off_term" in loss.metric_names()
    assert not loss.needs("entropy")  # no forward pass computes an entropy for it


def test_build_loss_follows_the_coefficients():
    loss = build_loss(compose_train(["algorithm.kl_coef=0.05"]))
    assert [(w.term.name, w.weight) for w in loss.terms] == [("pg_loss", 1.0), ("kl_ref", 0.05), ("entropy_bonus", -0.0)]
    assert not loss.needs("entropy") and loss.needs("ref_logprobs")
    assert build_loss(compose_train(["algorithm.entropy_coef=0.01"])).needs("entropy")


# -------------------------------------------------------------------------------------- estimate
def test_group_estimator_puts_the_sequence_advantage_on_policy_tokens_of_this_process():
    # rewards [1, 0 | 1, 1]: group 0 -> GRPO (+0.7071, -0.7071); group 1 all equal -> 0. This process has rows [0, 2)
    b = batch()
    tokens, returns, sequence, zero = GroupEstimator(grpo_advantages)(b, rewards=torch.tensor([1.0, 0.0, 1.0, 1.0]),
                                                             group_index=torch.tensor([0, 0, 1, 1]), num_groups=2, rows=slice(0, 2))
    a = 1 / math.sqrt(2)
    torch.testing.assert_close(tokens, torch.tensor([[a, a, a], [-a, -a, 0.0]]), atol=1e-5, rtol=1e-5)
    assert sequence.shape == (4,) and zero.tolist() == [False, False, True, True] and returns is None


# ---------------------------------------------------------------------------------------- update
@pytest.mark.parametrize("rows, mini_batches", [(9, 6), (8, 3), (4, 4)])
def test_update_takes_exactly_mini_batches_steps_per_epoch(rows, mini_batches):
    """torch.chunk splits 9 rows into chunks of ceil(9/6) = 2, i.e. 5 mini-batches; tensor_split gives exactly 6."""
    from dynamo_cli.models.load import build_char_tokenizer, build_tiny_model
    from dynamo_cli.models.trainable import Trainable
    from dynamo_cli.modulation.none import NoModulator
    from dynamo_cli.runtime.distributed import DataParallel
    from dynamo_cli.stages.update import PolicyUpdate

    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), build_char_tokenizer())
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ids = torch.randint(4, 40, (rows, 6), generator=torch.Generator().manual_seed(0))
    b = Trajectories(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=torch.ones(rows, 4, dtype=torch.bool),
                     prompt_index=torch.zeros(rows, dtype=torch.long), prompt_width=2, advantages=torch.randn(rows, 4),
                     old_logprobs=torch.full((rows, 4), -3.0), old_entropy=torch.ones(rows, 4))
    update = PolicyUpdate(trainables=[Trainable("policy", model, optimizer, scheduler, grad_clip=1.0)],
                          loss=Loss(terms=[Weighted(PPOClip(eps_low=0.2, eps_high=0.2), 1.0)], mode="token_mean"),
                          modulator=NoModulator(), dp=DataParallel.start("cpu"), ppo_epochs=2, mini_batches=mini_batches,
                          micro_batch_size=2, modulator_scope="mini_batch", temperature=1.0, reuse_forward=False)
    update(b, generator=torch.Generator().manual_seed(0), step=1)
    assert scheduler.last_epoch == 2 * mini_batches


# -------------------------------------------------------------------------------- collect's parts
def test_uniform_sampler_visits_every_problem_once_per_epoch_and_replays():
    sampler = UniformSampler(seed=7)
    first_epoch = [i for step in (1, 2, 3) for i in sampler.prompt_indices(step, num_problems=12, per_step=4)]
    assert sorted(first_epoch) == list(range(12))
    assert UniformSampler(seed=7).prompt_indices(2, num_problems=12, per_step=4) == first_epoch[4:8]  # a pure function


def test_trajectories_single_turn_and_select():
    from dynamo_cli.rollout.hf import Rollouts

    rollouts = Rollouts(prompt_index=torch.tensor([0, 1]), input_ids=torch.arange(8).view(2, 4), attention_mask=torch.ones(2, 4),
                        completion_mask=torch.tensor([[True, False], [True, True]]), prompt_width=2, texts=["a", "bc"],
                        finished=torch.tensor([True, True]))
    t = Trajectories.single_turn(rollouts)
    assert t.loss_mask.tolist() == [[True, False], [True, True]] and t.turns is None
    picked = t.select(torch.tensor([1]))
    assert picked.input_ids.tolist() == [[4, 5, 6, 7]] and picked.prompt_width == 2 and len(picked) == 1


# ---------------------------------------------------------------------------------- registries
@pytest.mark.parametrize("group, registry", [("sampler", parts.SAMPLERS), ("allocator", parts.ALLOCATORS),
                                             ("modulator", parts.MODULATORS), ("rollout", parts.ROLLOUT_ENGINES)])
def test_every_option_of_a_group_has_a_builder(group, registry):
    for path in (CONF_DIR / group).glob("*.yaml"):
        assert getattr(compose_train([f"{group}={path.stem}"]), group).name in registry.names()


@pytest.mark.parametrize("advantage", ["grpo", "drgrpo", "rloo", "w_reinforce"])
def test_every_advantage_estimator_builds(advantage):
    assert isinstance(parts.build_estimator(compose_train([f"algorithm.advantage={advantage}"])), GroupEstimator)


def test_registry_refuses_unknown_names_and_duplicates():
    registry = Registry("thing")
    registry.register("a")(lambda cfg: 1)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(lambda cfg: 2)

    class Cfg:
        name = "b"

    with pytest.raises(KeyError, match="no thing for 'b'; registered: a"):
        registry.build(Cfg())


def test_collect_runs_the_rounds_a_round_allocator_asks_for():
    """A RoundAllocator sees round 0's rewards and asks for 3 more rollouts of every prompt whose group is all
    equal (DAPO-like), once. The merged batch stays aligned (each reward is its own prompt's) and padding a
    round to the merged widths leaves its log-probs unchanged."""
    from dynamo_cli.allocation.base import Allocation
    from dynamo_cli.allocation.uniform import UniformAllocator
    from dynamo_cli.models.load import build_char_tokenizer, build_tiny_model
    from dynamo_cli.protocols import RoundAllocator
    from dynamo_cli.rollout.hf import PolicyRollouts, stream_seed
    from dynamo_cli.rollout.policy_stats import batched_token_stats
    from dynamo_cli.runtime.distributed import DataParallel
    from dynamo_cli.stages.collect import Collector
    from dynamo_cli.tasks.math import MathTask

    class Refill(UniformAllocator):
        def next_round(self, prompt_ids, *, rewards, group_index, round):
            if round > 1:
                return None
            hi = torch.full((len(prompt_ids),), -1.0).scatter_reduce(0, group_index, rewards, "amax")
            lo = torch.full((len(prompt_ids),), 2.0).scatter_reduce(0, group_index, rewards, "amin")
            counts = torch.where(hi == lo, 3, 0)
            return Allocation(counts=counts, priority=torch.ones(len(prompt_ids)))

    def uniform(cls):
        return cls(n=2, explore_min_attempts=4, decay=1.0)

    assert isinstance(uniform(Refill), RoundAllocator) and not isinstance(uniform(UniformAllocator), RoundAllocator)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tokenizer)
    task = MathTask(seed=1, num_train=40, num_test_per_level=2, levels=["L1", "L5"], format="plain")  # prompts of two widths
    collect = Collector(task=task, problems=task.train_problems(), tokenizer=tokenizer, sampler=UniformSampler(seed=0),
                        allocator=uniform(Refill), engine=PolicyRollouts(model, tokenizer), policy=model, reference=None,
                        dp=DataParallel.start("cpu"), per_step=4, seed=0, max_new_tokens=5, temperature=1.0, top_p=1.0,
                        generation_batch=16, logprob_batch=16, mask_truncated=False,
                        shape_rewards=OverlongPenalty(factor=0.0, max_length=5, buffer=1))
    got = collect(1)
    counts = got.allocation.counts
    assert got.allocation.metrics["alloc/rounds"] == 2.0 and int(counts.sum()) > 8  # the random policy solves ~nothing
    assert torch.bincount(got.group_index, minlength=4).tolist() == counts.tolist()
    assert len(got.batch) == len(got.rewards) == int(counts.sum())
    for r, (i, text) in enumerate(zip(got.group_index.tolist(), got.rollouts.texts, strict=True)):
        assert got.rewards[r] == task.verify(text, got.problems[i])
    first = collect.engine.generate(got.prompts, counts=torch.full((4,), 2), max_new_tokens=5, temperature=1.0, top_p=1.0,
                                    seed=stream_seed(0, 1),
                                    streams=torch.arange(8), max_batch_size=16)
    alone, _ = batched_token_stats(model, input_ids=first.input_ids, attention_mask=first.attention_mask,
                                   prompt_width=first.prompt_width, temperature=1.0, micro_batch_size=16)
    assert first.texts == got.rollouts.texts[:8]  # round 0 is the rows it would be alone
    mask = first.completion_mask
    torch.testing.assert_close(got.batch.old_logprobs[:8, :alone.shape[1]][mask], alone[mask], atol=1e-5, rtol=1e-5)


def test_prompt_pool_is_the_first_distinct_problems():
    from dynamo_cli.stages.collect import prompt_pool
    from dynamo_cli.tasks.base import Problem

    a, b, c = (Problem(f"t/{q}", q, "0", "L") for q in "abc")
    assert prompt_pool([a, b, a, c], 2) == [a, b] and prompt_pool([a, b, a, c], 9) == [a, b, c]  # repeats count once
    assert prompt_pool([a, b, a], None) == [a, b, a]  # null: the task's list as it stands


# ------------------------------------------------------------------------------------ PPO + GAE
def test_gae_estimator_whitens_advantages_but_not_returns():
    from dynamo_cli.algo.advantages.gae import GAEEstimator

    # rewards [1, 0] at each row's last policy token, γ = λ = 1: A = R − V. Row 0: V = [0.5, 0.25, 0] -> A [0.5, 0.75, 1];
    # row 1 (2 tokens): V = [0.2, 0.4] -> A [−0.2, −0.4]. The 5 advantages: mean 0.33, unbiased var 0.3295
    b = batch(values=torch.tensor([[0.5, 0.25, 0.0], [0.2, 0.4, 9.0]]), old_logprobs=torch.zeros(2, 3))
    adv, returns, sequence, zero = GAEEstimator(gamma=1.0, lam=1.0, kl_in_reward=0.0)(
        b, rewards=torch.tensor([1.0, 0.0]), group_index=torch.tensor([0, 0]), num_groups=1, rows=slice(0, 2))
    raw = torch.tensor([0.5, 0.75, 1.0, -0.2, -0.4])
    mean, sd = raw.mean(), raw.var().add(1e-8).sqrt()
    torch.testing.assert_close(adv[b.loss_mask], (raw - mean) / sd)
    assert adv[1, 2] == 0 and returns.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    torch.testing.assert_close(sequence, adv[:, 0])  # the first policy token's advantage, for the logs
    assert not zero.any()
    # KL in the reward: −β (log π_old − log π_ref) on every token, here −0.5 · 1 per token of row 0
    b = b.replace(old_logprobs=torch.zeros(2, 3), ref_logprobs=torch.tensor([[-1.0, -1.0, -1.0], [0.0, 0.0, 0.0]]))
    _, returns, _, _ = GAEEstimator(gamma=1.0, lam=1.0, kl_in_reward=0.5)(
        b, rewards=torch.tensor([1.0, 0.0]), group_index=torch.tensor([0, 0]), num_groups=1, rows=slice(0, 2))
    torch.testing.assert_close(returns[0], torch.tensor([-0.5, 0.0, 0.5]))  # G_t = Σ_{s≥t} r_s: [1 − 1.5, 1 − 1, 1 − 0.5]


def test_value_term_through_the_loss():
    from dynamo_cli.algo.terms.value import ValueLoss

    # V = [[0.5, −0.5, 3], [1, 1, x]], V_old = 0, G = 1, ε_v = 0.2: per token 0.32, 1.125, 0.5·max(4, 0.64) = 2 | 0.32, 0.32
    #   (row 1: V − G = 0 unclipped, clipped (0.2 − 1)² = 0.64 -> 0.32); token mean over 5: (0.32+1.125+2+0.32+0.32)/5
    b = batch(values=torch.zeros(2, 3), returns=torch.ones(2, 3))
    out = ModelOutputs(logprobs=torch.zeros(2, 3), values=torch.tensor([[0.5, -0.5, 3.0], [1.0, 1.0, 7.0]]))
    loss = Loss(terms=[Weighted(ValueLoss(clip=0.2), 0.5)], mode="token_mean")
    value, metrics = loss(b, out, num_tokens=5, num_sequences=2)
    assert math.isclose(metrics["value_loss"], (0.32 + 1.125 + 2 + 0.32 + 0.32) / 5, rel_tol=1e-6)
    assert math.isclose(value.item(), 0.5 * metrics["value_loss"], rel_tol=1e-6)
    assert math.isclose(metrics["vf_clip_frac"], 3 / 5) and loss.needs("values")


def test_ppo_config_builds_the_value_term_and_the_gae_estimator():
    from dynamo_cli.algo.advantages.gae import GAEEstimator

    cfg = compose_train(["algorithm.advantage=gae", "critic=separate", "critic.value_coef=0.5", "critic.value_clip=0.3"])
    loss = build_loss(cfg)
    assert [(w.term.name, w.weight) for w in loss.terms][-1] == ("value_loss", 0.5) and loss.terms[-1].term.clip == 0.3
    assert isinstance(parts.build_estimator(cfg), GAEEstimator)
    assert "value_loss" not in build_loss(compose_train([])).metric_names()  # no critic, no value term
    for path in (CONF_DIR / "critic").glob("*.yaml"):
        assert path.stem in parts.CRITICS.names()


def tiny_policy():
    from dynamo_cli.models.load import build_char_tokenizer, build_tiny_model

    return build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), build_char_tokenizer())


def test_critic_copies_the_policy_trunk_and_values_align_with_the_log_probs():
    from dynamo_cli.models.critic import completion_values, make_critic

    policy = tiny_policy()
    critic = make_critic(policy, torch.device("cpu"))
    assert all(torch.equal(v, policy.model.state_dict()[k]) for k, v in critic.model.state_dict().items())
    ids = torch.randint(4, 40, (2, 7), generator=torch.Generator().manual_seed(0))
    values = completion_values(critic, input_ids=ids, attention_mask=torch.ones_like(ids), prompt_width=3)  # (2, 4)
    assert values.shape == (2, 4)
    # V at response token j reads the prefix before it: changing response token 2 (column 5) leaves V_0..V_2 alone
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 40
    again = completion_values(critic, input_ids=changed, attention_mask=torch.ones_like(ids), prompt_width=3)
    torch.testing.assert_close(again[:, :3], values[:, :3])
    assert not torch.allclose(again[:, 3], values[:, 3])


def test_update_trains_only_the_critic_during_its_warm_up_then_both():
    from dynamo_cli.algo.terms.value import ValueLoss
    from dynamo_cli.models.critic import SeparateCritic, make_critic
    from dynamo_cli.models.trainable import Trainable
    from dynamo_cli.modulation.none import NoModulator
    from dynamo_cli.runtime.distributed import DataParallel
    from dynamo_cli.stages.update import PolicyUpdate

    policy = tiny_policy()
    critic = make_critic(policy, torch.device("cpu"))

    def trainable(name, model, solo_steps=0):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
        return Trainable(name, model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), grad_clip=1.0,
                         solo_steps=solo_steps)

    ids = torch.randint(4, 40, (4, 6), generator=torch.Generator().manual_seed(0))
    b = Trajectories(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=torch.ones(4, 4, dtype=torch.bool),
                     prompt_index=torch.zeros(4, dtype=torch.long), prompt_width=2, advantages=torch.randn(4, 4),
                     old_logprobs=torch.full((4, 4), -3.0), old_entropy=torch.ones(4, 4), values=torch.zeros(4, 4),
                     returns=torch.ones(4, 4))
    update = PolicyUpdate(trainables=[trainable("policy", policy), trainable("critic", critic, solo_steps=1)],
                          loss=Loss(terms=[Weighted(PPOClip(eps_low=0.2, eps_high=0.2), 1.0), Weighted(ValueLoss(clip=0.0), 1.0)],
                                    mode="token_mean"),
                          modulator=NoModulator(), dp=DataParallel.start("cpu"), ppo_epochs=1, mini_batches=2,
                          micro_batch_size=2, modulator_scope="mini_batch", temperature=1.0, reuse_forward=False, value_function=SeparateCritic(critic))

    def snapshot():
        return [p.detach().clone() for p in policy.parameters()], [p.detach().clone() for p in critic.parameters()]

    before = snapshot()
    metrics, _ = update(b, generator=torch.Generator().manual_seed(0), step=1)  # warm-up: the critic alone
    after = snapshot()
    assert all(torch.equal(x, y) for x, y in zip(before[0], after[0], strict=True)) and metrics["train/grad_norm"] == 0
    assert any(not torch.equal(x, y) for x, y in zip(before[1], after[1], strict=True)) and metrics["train/critic_grad_norm"] > 0
    assert update.trainables[0].scheduler.last_epoch == 0 and update.trainables[1].scheduler.last_epoch == 2
    metrics, _ = update(b, generator=torch.Generator().manual_seed(0), step=2)
    assert any(not torch.equal(x, y) for x, y in zip(after[0], snapshot()[0], strict=True)) and metrics["train/grad_norm"] > 0


def test_shared_critic_reads_the_policys_hidden_state_and_its_value_loss_moves_the_trunk():
    """critic=shared: V = head(last hidden state) at the positions aligned with the log-probs; the old values equal the
    update's; a value loss alone moves the policy's trunk (the head is on it) once the warm-up is over, and only the
    head during it. critic=separate: the same value loss never touches the policy."""
    from dynamo_cli.algo.terms.value import ValueLoss
    from dynamo_cli.models.critic import SeparateCritic, SharedCritic, make_critic, make_value_head
    from dynamo_cli.models.trainable import Trainable
    from dynamo_cli.modulation.none import NoModulator
    from dynamo_cli.rollout.policy_stats import completion_forward
    from dynamo_cli.runtime.distributed import DataParallel
    from dynamo_cli.stages.update import PolicyUpdate

    torch.manual_seed(0)
    policy = tiny_policy()
    shared = SharedCritic(make_value_head(policy, torch.device("cpu")))
    ids = torch.randint(4, 40, (4, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    hidden = completion_forward(policy, input_ids=ids, attention_mask=mask, prompt_width=2, temperature=1.0, with_hidden=True).hidden
    by_hand = policy(input_ids=ids, output_hidden_states=True).hidden_states[-1][:, 1:-1] @ shared.module.score.weight[0] \
        + shared.module.score.bias[0]
    torch.testing.assert_close(shared.values(shared.module, hidden=hidden), by_hand)
    old = shared.old_values(policy=policy, input_ids=ids, attention_mask=mask, prompt_width=2, micro_batch_size=3)
    torch.testing.assert_close(old, by_hand.detach())

    def trainable(name, model, solo_steps=0):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-1)
        return Trainable(name, model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), grad_clip=0.0,
                         solo_steps=solo_steps)

    b = Trajectories(input_ids=ids, attention_mask=mask, loss_mask=torch.ones(4, 4, dtype=torch.bool),
                     prompt_index=torch.zeros(4, dtype=torch.long), prompt_width=2, advantages=torch.zeros(4, 4),
                     old_logprobs=torch.full((4, 4), -3.0), old_entropy=torch.ones(4, 4), values=old, returns=torch.ones(4, 4))

    def moved(value_function, critic_module):  # the policy's weights after one warm-up step and one normal step
        update = PolicyUpdate(trainables=[trainable("policy", policy), trainable("critic", critic_module, solo_steps=1)],
                              loss=Loss(terms=[Weighted(PPOClip(eps_low=0.2, eps_high=0.2), 0.0), Weighted(ValueLoss(clip=0.0), 1.0)],
                                        mode="token_mean"),
                              modulator=NoModulator(), dp=DataParallel.start("cpu"), ppo_epochs=1, mini_batches=1,
                              micro_batch_size=4, modulator_scope="mini_batch", temperature=1.0, reuse_forward=False, value_function=value_function)
        changes = []
        for step in (1, 2):
            before = ([p.detach().clone() for p in policy.parameters()], [p.detach().clone() for p in critic_module.parameters()])
            update(b, generator=torch.Generator().manual_seed(0), step=step)
            changes.append((any(not torch.equal(x, p) for x, p in zip(before[0], policy.parameters(), strict=True)),
                            any(not torch.equal(x, p) for x, p in zip(before[1], critic_module.parameters(), strict=True))))
        return changes

    assert moved(shared, shared.module) == [(False, True), (True, True)]  # warm-up: the head alone; then the trunk too
    separate = make_critic(policy, torch.device("cpu"))
    assert moved(SeparateCritic(separate), separate) == [(False, True), (False, True)]  # the policy never moves


def test_critic_of_a_lora_policy_copies_the_base_weights():
    from dynamo_cli.config.model import LoraConfig
    from dynamo_cli.models.critic import make_critic
    from dynamo_cli.models.load import add_lora, base_state_dict

    policy = add_lora(tiny_policy(), LoraConfig(enabled=True, r=2, alpha=4, target_modules=["q_proj", "v_proj"]))
    critic = make_critic(policy, torch.device("cpu"))
    base = base_state_dict(policy)
    assert all(torch.equal(v, base[f"model.{k}"]) for k, v in critic.model.state_dict().items())
    assert all(p.requires_grad for p in critic.parameters())  # the critic trains all its weights


def test_value_head_resumes_in_the_dtype_it_was_saved_in(tmp_path):
    from dynamo_cli.models.critic import ValueHead

    head = ValueHead(8).to(torch.bfloat16)
    head.save_pretrained(tmp_path)
    back = ValueHead.from_pretrained(tmp_path)
    assert back.score.weight.dtype == torch.bfloat16 and torch.equal(back.score.weight, head.score.weight)
    assert back(torch.ones(2, 3, 8)).dtype == torch.float32  # values come out in float32 whatever the head's dtype
