import math

import pytest
import torch

from dynamo_cli.algo.logits import entropy_from_logits, logprobs_from_logits
from dynamo_cli.algo.terms.base import AGGREGATIONS, aggregate, group_row_weights, loss_counts
from dynamo_cli.algo.terms.kl import kl_k3
from dynamo_cli.algo.terms.ppo_clip import ppo_clip_loss


def test_ppo_clip_hand_values():
    # eps_low .2, eps_high .28 -> ratio clipped to [.8, 1.28]; loss = max(-r A, -clip(r) A)
    #   r = e^.1 = 1.10517, A = +1: inside the range           -> -1.10517, not clipped
    #   r = e^.3 = 1.34986, A = +1: -1.34986 vs -1.28           -> -1.28,    clipped
    #   r = e^.3 = 1.34986, A = -1: 1.34986 vs 1.28 (pessimist) -> 1.34986,  not clipped
    #   r = e^-.3 = .74082, A = -1: .74082 vs .8                -> .8,       clipped
    #   r = e^-.3 = .74082, A = +1: -.74082 vs -.8              -> -.74082,  not clipped
    #   padding (log-ratio 50, A = 7)                           -> 0
    log_ratio = torch.tensor([[0.1, 0.3, 0.3, -0.3, -0.3, 50.0]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0, 7.0]])
    mask = torch.tensor([[True] * 5 + [False]])
    logprobs = (log_ratio - 2.0).requires_grad_()
    loss, clipped = ppo_clip_loss(
        logprobs=logprobs, old_logprobs=torch.full_like(log_ratio, -2.0), advantages=advantages, mask=mask,
        eps_low=0.2, eps_high=0.28,
    )
    expected = [[-math.exp(0.1), -1.28, math.exp(0.3), 0.8, -math.exp(-0.3), 0.0]]
    torch.testing.assert_close(loss, torch.tensor(expected))
    assert clipped.tolist() == [[False, True, False, True, False, False]]
    # d loss / d log pi = -A r where the unclipped term is active, 0 where clipped (and on padding)
    loss.sum().backward()
    grad = [-math.exp(0.1), 0.0, math.exp(0.3), 0.0, -math.exp(-0.3), 0.0]
    torch.testing.assert_close(logprobs.grad, torch.tensor([grad]))


def test_kl_k3():
    # d = ref - logp: d = 0 -> e^0 - 0 - 1 = 0;  d = 1 -> e - 2 = .71828;  d = -1 -> e^-1 + 1 - 1 = .36788
    logprobs = torch.tensor([-1.0, -2.0, -1.0])
    ref = torch.tensor([-1.0, -1.0, -2.0])
    expected = torch.tensor([0.0, math.e - 2, math.exp(-1)])
    torch.testing.assert_close(kl_k3(logprobs=logprobs, ref_logprobs=ref), expected)


def test_aggregate_hand_values():
    # valid losses [1, 2, 3] and [4, 5] (99 is padding)
    # token_mean: (1+2+3+4+5) / 5 = 3;  seq_mean: (6/3 + 9/2) / 2 = (2 + 4.5) / 2 = 3.25
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    assert aggregate(per_token=per_token, mask=mask, mode="token_mean", num_tokens=5, num_sequences=2).item() == 3.0
    assert aggregate(per_token=per_token, mask=mask, mode="seq_mean", num_tokens=5, num_sequences=2).item() == 3.25
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(per_token=per_token, mask=mask, mode="sum", num_tokens=5, num_sequences=2)


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_micro_batches_give_the_one_pass_gradient(mode):
    g = torch.Generator().manual_seed(0)
    n, length = 5, 7
    logits_param = torch.randn(n, length, generator=g, requires_grad=True)  # stands in for the model
    old = torch.randn(n, length, generator=g) * 0.1 - 1.0
    advantages = torch.randn(n, 1, generator=g).expand(n, length)
    lengths = torch.tensor([7, 3, 5, 1, 6])
    mask = torch.arange(length) < lengths[:, None]  # (N, L), ragged
    counts = dict(num_tokens=int(mask.sum()), num_sequences=n, max_length=length)
    prompt_index = torch.tensor([0, 0, 1, 1, 1])  # two prompts of unequal group size, split across the micro-batches
    weights = group_row_weights(prompt_index=prompt_index, carries_loss=mask.any(1), group_counts=torch.bincount(prompt_index))

    def loss_of(rows):
        per_token, _ = ppo_clip_loss(
            logprobs=logits_param[rows] - 1.0, old_logprobs=old[rows], advantages=advantages[rows], mask=mask[rows],
            eps_low=0.2, eps_high=0.28,
        )
        return aggregate(per_token=per_token, mask=mask[rows], mode=mode, row_weight=weights[rows], **counts)

    full = loss_of(slice(0, n))
    (one_pass,) = torch.autograd.grad(full, logits_param)
    total = 0.0
    for rows in (slice(0, 2), slice(2, 5)):  # micro-batches of unequal size and token count
        part = loss_of(rows)
        part.backward()
        total += part.item()
    torch.testing.assert_close(logits_param.grad, one_pass)
    assert total == pytest.approx(full.item(), abs=1e-6)


def test_entropy_from_logits():
    # uniform over 4 -> ln 4; (ln 1, ln 2, ln 1, -1e4) -> p = .25, .5, .25, 0 -> H = 2 * .25 ln 4 + .5 ln 2 = 1.5 ln 2
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(2), 0.0, -1e4]])
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([math.log(4), 1.5 * math.log(2)]))
    big = torch.tensor([1000.0, 0.0, -1000.0])  # no overflow, ~one-hot -> ~0
    assert abs(entropy_from_logits(big).item()) < 1e-6
    rand = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(0))
    p = rand.softmax(-1)
    torch.testing.assert_close(entropy_from_logits(rand), -(p * p.log()).sum(-1))
    # half precision goes row by row in float32
    half = rand.bfloat16()
    torch.testing.assert_close(entropy_from_logits(half), entropy_from_logits(half.float()))
    assert entropy_from_logits(half).dtype == torch.float32


def test_logprobs_from_logits():
    # (ln 1, ln 2, ln 1) -> p = .25, .5, .25
    logits = torch.tensor([[[0.0, math.log(2), 0.0]]])
    torch.testing.assert_close(logprobs_from_logits(logits, torch.tensor([[1]])), torch.tensor([[math.log(0.5)]]))
    rand = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(1), requires_grad=True)
    tokens = torch.randint(0, 11, (2, 3), generator=torch.Generator().manual_seed(2))
    got = logprobs_from_logits(rand, tokens)
    torch.testing.assert_close(got, rand.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1))
    got.sum().backward()  # differentiable
    assert rand.grad is not None
    half = rand.detach().bfloat16()
    torch.testing.assert_close(logprobs_from_logits(half, tokens), logprobs_from_logits(half.float(), tokens))


def test_kl_k3_is_clamped_as_verl():
    # d = 12: e^12 - 12 - 1 = 162741.8 -> 10, and no gradient past the clamp;  d = -30 -> d clamped to -20:
    # e^-20 + 20 - 1 = 19.0 -> 10;  d = 2: e^2 - 3 = 4.389 stays (gradient d/dlogp = 1 - e^d = -6.389)
    logprobs = torch.tensor([-13.0, 29.0, -3.0], requires_grad=True)
    ref = torch.tensor([-1.0, -1.0, -1.0])
    kl = kl_k3(logprobs=logprobs, ref_logprobs=ref)
    torch.testing.assert_close(kl, torch.tensor([10.0, 10.0, math.exp(2) - 3]))
    kl.sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([0.0, 0.0, 1 - math.exp(2)]))


def test_dual_clip_caps_negative_advantages_at_c():
    # c = 3, eps .2/.28:
    #   A = -1, r = e^2 = 7.389 > c: max(7.389, 1.28) = 7.389 capped at -c A = 3 -> 3, no gradient (dual-clipped)
    #   A = -1, r = e^.5 = 1.6487 < c: max(1.6487, 1.28) = 1.6487, gradient -A r = 1.6487
    #   A = +1, r = e^2: dual-clip never acts on A > 0: max(-7.389, -1.28) = -1.28 (clipped as before)
    logprobs = torch.tensor([[2.0, 0.5, 2.0]], requires_grad=True)
    args = dict(old_logprobs=torch.zeros(1, 3), advantages=torch.tensor([[-1.0, -1.0, 1.0]]), mask=torch.ones(1, 3, dtype=torch.bool),
                eps_low=0.2, eps_high=0.28)
    loss, clipped = ppo_clip_loss(logprobs=logprobs, clip_ratio_c=3.0, **args)
    torch.testing.assert_close(loss, torch.tensor([[3.0, math.exp(0.5), -1.28]]))
    assert clipped.tolist() == [[True, False, True]]
    loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, math.exp(0.5), 0.0]]))
    plain, _ = ppo_clip_loss(logprobs=logprobs.detach(), clip_ratio_c=None, **args)  # off: the uncapped 7.389
    torch.testing.assert_close(plain, torch.tensor([[math.exp(2), math.exp(0.5), -1.28]]))


def test_new_aggregations_and_the_counts_they_divide_by():
    # rows: [1, 2, 3] (prompt 0), [4, 5, pad] (prompt 1), a row dropped whole (prompt 1: an empty mask), [1, 1, 1] (prompt 1)
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0], [7.0, 7.0, 7.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True], [True, True, False], [False, False, False], [True, True, True]])
    # the counts: 8 tokens, 3 rows with loss (not 4: the dropped row carries none)
    assert loss_counts(mask) == (8, 3)
    counts = dict(num_tokens=8, num_sequences=3)
    # seq_mean: (6/3 + 9/2 + 3/3) / 3 = (2 + 4.5 + 1) / 3 = 2.5
    assert aggregate(per_token=per_token, mask=mask, mode="seq_mean", **counts).item() == pytest.approx(2.5)
    # Dr. GRPO's seq_mean_token_sum_norm, L_max = 4: (6 + 9 + 3) / (4 * 3) = 1.5
    assert aggregate(per_token=per_token, mask=mask, mode="seq_mean_token_sum_norm", max_length=4, **counts).item() == 1.5
    # group_mean: prompt 0 has 1 row with loss, prompt 1 has 2 -> P = 2; w = 1/(2*1) = .5, 1/(2*2) = .25, 0, .25
    prompt_index = torch.tensor([0, 1, 1, 1])
    weights = group_row_weights(prompt_index=prompt_index, carries_loss=mask.any(1),
                                group_counts=torch.bincount(prompt_index[mask.any(1)], minlength=2))
    assert weights.tolist() == [0.5, 0.25, 0.0, 0.25]
    # .5 * 2 + .25 * 4.5 + .25 * 1 = 2.375: prompt 0's single row weighs as much as prompt 1's two together
    assert aggregate(per_token=per_token, mask=mask, mode="group_mean", row_weight=weights, **counts).item() == 2.375
    with pytest.raises(ValueError, match="row_weight"):
        aggregate(per_token=per_token, mask=mask, mode="group_mean", **counts)
