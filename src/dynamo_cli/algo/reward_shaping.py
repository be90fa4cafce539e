"""Reward shaping between the verifier and the estimator: what the policy learns from, not what is logged as
correct (the allocator and sampler keep learning from the verifier's rewards).

DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13), with L_max the longest allowed completion and L_cache
the buffer before it, |y| the completion's length in tokens:

    R_length(y) = 0                                   |y| <= L_max - L_cache
                  ((L_max - L_cache) - |y|) / L_cache  L_max - L_cache < |y| <= L_max
                  -1                                  L_max < |y|
"""
from __future__ import annotations

import torch
from torch import Tensor


def overlong_penalty(*, lengths: Tensor, max_length: int, buffer: int) -> Tensor:
    """R_length of each completion: lengths (B,) -> (B,) float in [-1, 0]."""
    start = max_length - buffer
    lengths = lengths.to(torch.get_default_dtype())
    ramp = (start - lengths) / buffer  # (B,) 0 at the buffer's start, -1 at L_max
    return torch.where(lengths <= start, 0.0, torch.where(lengths <= max_length, ramp, -1.0))


class OverlongPenalty:
    """rewards + factor * R_length(lengths); factor 0 leaves the rewards exactly as they are."""

    def __init__(self, *, factor: float, max_length: int, buffer: int):
        self.factor, self.max_length, self.buffer = factor, max_length, buffer

    def __call__(self, rewards: Tensor, *, lengths: Tensor) -> tuple[Tensor, dict[str, float]]:
        """(shaped rewards (B,), metrics): rewards (B,) and completion lengths (B,) of the whole step."""
        if self.factor == 0:
            return rewards, {}
        penalty = self.factor * overlong_penalty(lengths=lengths, max_length=self.max_length, buffer=self.buffer)
        return rewards + penalty, {"rollout/overlong_penalty_mean": float(penalty.mean()),
                                   "rollout/overlong_penalised_frac": float((penalty < 0).float().mean())}
