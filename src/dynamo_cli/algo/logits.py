"""Entropy and log-probs from logits, in float32 whatever the logits' dtype, and outside any autocast region (under
mixed precision the model's matmuls run in bfloat16; these reductions over the vocabulary must not)."""
from __future__ import annotations

import torch
from torch import Tensor


def _rowwise(fn, logits: Tensor, *args: Tensor) -> Tensor:
    """Apply fn in float32 with autocast off; half-precision logits go one sequence at a time, since upcasting the whole
    (N, L, V) tensor at once would double peak memory."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
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
