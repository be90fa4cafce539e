"""Policy-loss pieces: PPO-clip, k3 KL, loss aggregation, and entropy / log-probs from logits.

All per-token tensors are (N, L) with a bool `mask` (true on valid response tokens); padding never enters a
loss. The aggregation takes its denominators as arguments so that gradient accumulation over micro-batches
reproduces a single pass over the mini-batch exactly.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dynamo_cli.algo.advantages import masked_sum

AGGREGATIONS = ("token_mean", "seq_mean")


def ppo_clip_loss(
    *, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor]:
    """PPO-clip with asymmetric range (Clip-Higher when eps_high > eps_low, DAPO arXiv 2503.14476).

        loss = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A),  r = exp(log pi - log pi_old)

    The log-ratio is clamped to [-20, 20] before exp (as verl) so a stale token cannot overflow.
    Returns (per_token_loss (N, L), 0 on padding; clipped (N, L) bool: valid tokens where the clipped term is
    the active one, i.e. that token passes no gradient).
    """
    ratio = torch.exp((logprobs - old_logprobs).clamp(-20.0, 20.0))  # (N, L)
    unclipped = -advantages * ratio
    clipped_loss = -advantages * ratio.clamp(1 - eps_low, 1 + eps_high)
    loss = torch.maximum(unclipped, clipped_loss)  # -min(.,.) = max(-., -.)
    mask = mask.bool()
    return torch.where(mask, loss, 0.0), mask & (clipped_loss > unclipped)


def kl_k3(*, logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref): exp(d) - d - 1 with d = log pi_ref - log pi. (N, L), >= 0."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


def aggregate(*, per_token: Tensor, mask: Tensor, mode: str, num_tokens: int, num_sequences: int) -> Tensor:
    """Reduce a per-token loss (N, L) to a scalar.

    token_mean: sum_{i,t} loss / num_tokens                      (DAPO / the paper: every token weighs the same)
    seq_mean:   sum_i (sum_t loss_i,t / len_i) / num_sequences     (GRPO's per-sequence mean)

    num_tokens / num_sequences are the counts of the whole *mini-batch* (one optimiser step), not of this
    call's tensor: then summing aggregate() over the micro-batches of a mini-batch gives exactly the loss and
    gradient of one pass over it (no 1/num_micro_batches rescaling needed). With data parallelism pass the
    global counts and multiply by the world size, since DDP averages gradients over ranks.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")
    if num_tokens <= 0 or num_sequences <= 0:
        raise ValueError(f"num_tokens and num_sequences must be > 0, got {num_tokens}, {num_sequences}")
    if mode == "token_mean":
        return masked_sum(per_token, mask) / num_tokens
    lengths = mask.bool().sum(dim=1).clamp(min=1)  # (N,) a sequence without valid tokens contributes 0
    return (masked_sum(per_token, mask, dim=1) / lengths).sum() / num_sequences


def _rowwise(fn, logits: Tensor, *args: Tensor) -> Tensor:
    """Apply fn in float32; half-precision logits go one sequence at a time, since upcasting the whole
    (N, L, V) tensor at once would double peak memory."""
    if logits.dim() < 2 or logits.dtype in (torch.float32, torch.float64):
        return fn(logits.to(torch.promote_types(logits.dtype, torch.float32)), *args)
    return torch.stack([fn(row.float(), *(a[i] for a in args)) for i, row in enumerate(logits)])


def _entropy(logits: Tensor) -> Tensor:
    # H = logsumexp(z) - sum_v softmax(z)_v z_v, stable for any logit scale
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)


def _logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    # gather - logsumexp never materialises the full (..., V) log_softmax
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Full-vocabulary entropy of softmax(logits) over the last dim: (..., V) -> (...), float32 or wider.

    Logits must be finite (a -inf logit gives 0 * -inf = nan); mask with a large negative number instead.
    """
    return _rowwise(_entropy, logits)


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """log softmax(logits)[token]: logits (..., V), tokens (...) long -> (...), float32 or wider."""
    return _rowwise(_logprobs, logits, tokens)


def value_loss(*, values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """PPO's clipped value loss (Schulman et al. 2017; the clip as in OpenAI baselines' ppo2 and verl's critic):

        loss = 0.5 · max((V − G)², (V_old + clip(V − V_old, −ε_v, ε_v) − G)²)      ε_v = clip; 0: no clipping

    Returns (per_token_loss (N, L), 0 on padding; clipped (N, L) bool: valid tokens where the clipped term is the
    larger one, so that token's value passes no gradient)."""
    unclipped = (values - returns) ** 2
    if clip > 0:
        clipped_values = old_values + (values - old_values).clamp(-clip, clip)
        clipped = (clipped_values - returns) ** 2
        loss, active = torch.maximum(unclipped, clipped), clipped > unclipped
    else:
        loss, active = unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    mask = mask.bool()
    return torch.where(mask, 0.5 * loss, 0.0), mask & active
