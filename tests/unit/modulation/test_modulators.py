import math

import pytest
import torch

from dynamo_cli.modulation.dynamo import DynamoModulator, compensation_factor, entropy_change, stabilisation_factor
from dynamo_cli.modulation.none import NoModulator

# N=2 sequences, L=3 positions; the last position of sequence 1 is padding.
MASK = torch.tensor([[True, True, True], [True, True, False]])
WHOLE = torch.tensor([0, 0])  # one scope: the whole batch
PER_SEQ = torch.tensor([0, 1])
# the reference's "decay6" values with the paper's clip range, stated here: the hand-worked values below depend on them
DECAY6 = dict(compensate=True, stabilise=True, mu_max=1.2, lambda_min=0.6, gamma=50.0, tau=0.99, eps_low=0.2, eps_high=0.28)


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- compensation


def test_compensation_hand_values_and_padding_ignored():
    # valid entropies 1, 2, 3 | .5, 2.5 -> H_max = 3, H_min = .5 (the padded 100 must not count), spread 2.5
    # beta = 1 + .2 (3 - H) / 2.5:  H=1 -> 1.16, H=2 -> 1.08, H=3 -> 1.0, H=.5 -> 1.2, H=2.5 -> 1.04
    advantages = torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.5, 0.5]])
    expected = [[1.16, 1.08, 1.0], [1.2, 1.04, 1.0]]  # padding -> 1
    for pad in (100.0, -100.0):
        entropy = torch.tensor([[1.0, 2.0, 3.0], [0.5, 2.5, pad]])
        beta = compensation_factor(advantages=advantages, entropy=entropy, mask=MASK, scope_index=WHOLE, mu_max=1.2)
        close(beta, expected)


def test_compensation_per_sequence_scope():
    # seq 0: H in [1, 3], spread 2 -> 1 + .2 (3 - H) / 2 = 1.2, 1.1, 1.0
    # seq 1: H in [.5, 2.5], spread 2 -> 1.2, 1.0
    entropy = torch.tensor([[1.0, 2.0, 3.0], [0.5, 2.5, 100.0]])
    beta = compensation_factor(
        advantages=torch.ones(2, 3), entropy=entropy, mask=MASK, scope_index=PER_SEQ, mu_max=1.2
    )
    close(beta, [[1.2, 1.1, 1.0], [1.2, 1.0, 1.0]])


def test_compensation_only_boosts_positive_advantages_and_guards_flat_entropy():
    entropy = torch.tensor([[1.0, 2.0, 3.0], [0.5, 2.5, 100.0]])
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-0.5, 0.0, -0.5]])
    beta = compensation_factor(advantages=advantages, entropy=entropy, mask=MASK, scope_index=WHOLE, mu_max=1.2)
    close(beta, [[1.16, 1.08, 1.0], [1.0, 1.0, 1.0]])  # seq 1's entropies still set H_min = .5
    # H_max == H_min: nothing to normalise by -> factor 1, not nan
    flat = compensation_factor(
        advantages=torch.ones(2, 3), entropy=torch.full((2, 3), 2.0), mask=MASK, scope_index=WHOLE, mu_max=1.2
    )
    close(flat, [[1.0] * 3] * 2)


# ---------------------------------------------------------------- entropy change


def policy_stats():
    """Hand-made stats. Lambda = log pi + H, so H = Lambda - log pi.

    seq 0 (A = +1): pi = .5, .25, 1;  Lambda = 1, 2, 1 -> pi Lambda = .5, .5, 1, mean 2/3
                    pi_old = .5, .2, 2/3 -> r = 1, 1.25, 1.5 (> 1 + .28: clipped, I = 0)
    seq 1 (A = -1): pi = .5, .5;  Lambda = 2, 0 -> pi Lambda = 1, 0, mean .5
                    pi_old = .5, .8 -> r = 1, .625 (< 1 - .2: clipped, I = 0)
                    padding holds garbage (log pi = 5, H = 1000) that must not enter the mean
    """
    pi = torch.tensor([[0.5, 0.25, 1.0], [0.5, 0.5, math.exp(5.0)]])
    lam = torch.tensor([[1.0, 2.0, 1.0], [2.0, 0.0, 0.0]])
    logprobs = pi.log()
    entropy = lam - logprobs
    entropy[1, 2] = 1000.0
    old_logprobs = torch.tensor([[0.5, 0.2, 2 / 3], [0.5, 0.8, math.exp(-5.0)]]).log()
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    return dict(advantages=advantages, logprobs=logprobs, old_logprobs=old_logprobs, entropy=entropy, mask=MASK)


def test_entropy_change_hand_values():
    # xi = I r A: seq 0 -> 1, 1.25, 0; seq 1 -> -1, 0
    # dH = -xi (pi Lambda - mean):
    #   seq 0: -1 (.5 - 2/3) = 1/6,  -1.25 (.5 - 2/3) = 5/24,  0
    #   seq 1: -(-1) (1 - .5) = .5,  0;  padding 0
    delta_h = entropy_change(**policy_stats(), eps_low=0.2, eps_high=0.28)
    close(delta_h, [[1 / 6, 5 / 24, 0.0], [0.5, 0.0, 0.0]])


# ---------------------------------------------------------------- stabilisation

DELTA_H = torch.tensor([[1 / 6, 5 / 24, 0.0], [0.5, 0.0, 100.0]])  # 100 sits on padding


def beta(x, lambda_min=0.6, gamma=5.0, tau=0.5):
    return lambda_min + (1 - lambda_min) / (1 + math.exp(gamma * (x - tau)))


def test_stabilisation_hand_values():
    # gamma = 5, tau = .5, lambda_min = .6 so every value is visibly below 1.
    # whole scope: max |dH| = .5 (the padded 100 ignored) -> x = 1/3, 5/12, 0 | 1, 0
    #   beta(1/3) = .6 + .4 / (1 + e^{-.8333}) = .6 + .4 * .69706 = .87882
    #   beta(5/12) = .6 + .4 / (1 + e^{-.4167}) = .84107
    #   beta(0) = .6 + .4 / (1 + e^{-2.5}) = .96966;  beta(1) = .6 + .4 / (1 + e^{2.5}) = .63034
    got = stabilisation_factor(delta_h=DELTA_H, mask=MASK, scope_index=WHOLE, lambda_min=0.6, gamma=5.0, tau=0.5)
    close(got, [[0.87882, 0.84107, 0.96966], [0.63034, 0.96966, 1.0]])
    assert abs(beta(1 / 3) - 0.87882) < 1e-5 and abs(beta(1) - 0.63034) < 1e-5
    # per sequence: seq 0's max is 5/24 -> x = .8, 1, 0 -> beta(.8) = .6 + .4 / (1 + e^{1.5}) = .67297
    got = stabilisation_factor(delta_h=DELTA_H, mask=MASK, scope_index=PER_SEQ, lambda_min=0.6, gamma=5.0, tau=0.5)
    close(got, [[0.67297, 0.63034, 0.96966], [0.63034, 0.96966, 1.0]])


def test_stabilisation_defaults_only_damp_the_extreme_token():
    # gamma 50, tau .99: x = 1 -> .6 + .4 sigmoid(-.5) = .6 + .4 * .37754 = .75102; x <= 5/12 -> ~1
    got = stabilisation_factor(delta_h=DELTA_H, mask=MASK, scope_index=WHOLE, lambda_min=0.6, gamma=50.0, tau=0.99)
    close(got, [[1.0, 1.0, 1.0], [0.75102, 1.0, 1.0]])
    # no token moves entropy (max |dH| = 0): x = 0 -> beta = 1, not nan
    zero = stabilisation_factor(
        delta_h=torch.zeros(2, 3), mask=MASK, scope_index=WHOLE, lambda_min=0.6, gamma=50.0, tau=0.99
    )
    close(zero, [[1.0] * 3] * 2)


# ---------------------------------------------------------------- modulators


def test_dynamo_modulator_hand_values_and_metrics():
    stats = policy_stats()
    # beta_comp (whole scope): H = 1 + ln 2, 2 + ln 4, 1 | 2 + ln 2, ln 2 -> H_max = 3.38629, H_min = .69315
    #   seq 0 (A > 0): 1 + .2 (3.38629 - H) / 2.69315 = 1.12574, 1.0, 1.17722;  seq 1 (A < 0): 1
    # beta_stab (defaults): only seq 1 token 0 (x = 1) is damped, to .75102
    # A_final = [[1.12574, 1.0, 1.17722], [-.75102, -1.0, 0 (padding)]]
    shaping = DynamoModulator(**DECAY6)(**stats, scope_index=WHOLE)
    close(shaping.advantages, [[1.12574, 1.0, 1.17722], [-0.75102, -1.0, 0.0]])
    assert torch.equal(shaping.loss_mask, MASK)
    m = shaping.metrics
    assert abs(m["mod/beta_stab_min"] - 0.75102) < 1e-5 and abs(m["mod/abs_delta_h_max"] - 0.5) < 1e-6
    assert m["mod/boosted_frac"] == pytest.approx(2 / 5) and m["mod/damped_frac"] == pytest.approx(1 / 5)
    assert m["mod/beta_comp_pos_mean"] == pytest.approx((1.12574 + 1.0 + 1.17722) / 3, abs=1e-5)
    assert m["mod/beta_comp_mean"] == pytest.approx((1.12574 + 1.0 + 1.17722 + 2) / 5, abs=1e-5)
    assert {k: v.shape for k, v in shaping.distributions.items()} == {
        "beta_comp": (5,), "beta_stab": (5,), "abs_delta_h": (5,)
    }


def test_dynamo_modulator_switches():
    stats = policy_stats()
    both = DynamoModulator(**DECAY6)(**stats, scope_index=WHOLE).advantages
    comp_only = DynamoModulator(**{**DECAY6, "stabilise": False})(**stats, scope_index=WHOLE).advantages
    stab_only = DynamoModulator(**{**DECAY6, "compensate": False})(**stats, scope_index=WHOLE).advantages
    close(comp_only, [[1.12574, 1.0, 1.17722], [-1.0, -1.0, 0.0]])  # beta_stab = 1
    close(stab_only, [[1.0, 1.0, 1.0], [-0.75102, -1.0, 0.0]])  # beta_comp = 1
    torch.testing.assert_close(both, comp_only * stab_only / torch.where(MASK, stats["advantages"], 1.0))
    off = DynamoModulator(**{**DECAY6, "compensate": False, "stabilise": False})
    assert not off.needs_policy_stats
    close(off(advantages=stats["advantages"], mask=MASK).advantages, [[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]])


def test_dynamo_modulator_default_scope_is_whole_batch_and_outputs_have_no_grad():
    stats = {k: v.clone().requires_grad_(k != "mask") for k, v in policy_stats().items()}
    shaping = DynamoModulator(**DECAY6)(**stats)
    assert not shaping.advantages.requires_grad
    assert not any(d.requires_grad for d in shaping.distributions.values())
    close(shaping.advantages, [[1.12574, 1.0, 1.17722], [-0.75102, -1.0, 0.0]])
    with pytest.raises(ValueError, match="entropy"):
        DynamoModulator(**DECAY6)(advantages=stats["advantages"], mask=MASK)


def test_no_modulator_is_identity_on_valid_tokens():
    advantages = torch.tensor([[0.5, 0.5, 0.5], [-1.0, -1.0, -1.0]])
    shaping = NoModulator()(advantages=advantages, mask=MASK)
    assert NoModulator.needs_policy_stats is False
    assert shaping.advantages.tolist() == [[0.5, 0.5, 0.5], [-1.0, -1.0, 0.0]]
    assert torch.equal(shaping.loss_mask, MASK) and shaping.metrics == {}


def test_a_scope_spread_over_processes_gives_the_factors_of_the_whole_batch():
    """Data parallelism: each process holds half of a mini-batch; `scope_sync` combines the per-scope extrema
    (here a fake all-reduce that replays the other half's values) so both halves get the whole batch's factors."""
    g = torch.Generator().manual_seed(0)
    n, length = 8, 6
    inputs = dict(advantages=torch.randn(n, 1, generator=g).expand(n, length).clone(),
                  mask=torch.rand(n, length, generator=g) > 0.2, entropy=torch.rand(n, length, generator=g) * 2,
                  logprobs=-torch.rand(n, length, generator=g), old_logprobs=-torch.rand(n, length, generator=g))
    modulator = DynamoModulator(**DECAY6)
    whole = modulator(**inputs)
    halves = [{k: v[rows] for k, v in inputs.items()} for rows in (slice(0, 4), slice(4, 8))]

    def recorded(half) -> list[torch.Tensor]:
        seen = []
        modulator(**half, scope_sync=lambda values, how: seen.append(values.clone()) or values)
        return seen

    others = [recorded(halves[1]), recorded(halves[0])]
    outputs = []
    for half, other in zip(halves, others, strict=True):
        replay = iter(other)
        combine = lambda values, how, replay=replay: (torch.maximum if how == "amax" else torch.minimum)(values, next(replay))
        outputs.append(modulator(**half, scope_sync=combine).advantages)
    assert torch.allclose(torch.cat(outputs), whole.advantages, atol=1e-6)
    alone = torch.cat([modulator(**half).advantages for half in halves])  # without the sync: each half its own scope
    assert not torch.allclose(alone, whole.advantages, atol=1e-4)


def test_the_schema_defaults_are_decay6():
    """The one home of the modulator's defaults is its schema; the values stated above must be those."""
    from dynamo_cli.config.algorithm import AlgorithmConfig
    from dynamo_cli.modulation.dynamo import DynamoModulatorConfig

    m, algo = DynamoModulatorConfig(), AlgorithmConfig()
    assert {k: getattr(m, k) for k in ("compensate", "stabilise", "mu_max", "lambda_min", "gamma", "tau")} | {
        "eps_low": algo.eps_low, "eps_high": algo.eps_high} == DECAY6
