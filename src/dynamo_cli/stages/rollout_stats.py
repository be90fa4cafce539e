"""Where the rollout policy's log-probs and entropies (Trajectories.old_logprobs / old_entropy) come from.

Until the first optimiser step of a step the policy *is* the rollout policy, so the first mini-batch's training
forward already computes them: `algorithm.reuse_forward` reads them off it (detached) instead of a separate
no-grad pass in collect. The other mini-batches' rows still need the rollout policy's numbers, which only a pass
before the first optimiser step gives: `update` runs it over those rows only. With one update per step
(ppo_epochs = mini_batches = 1) the separate pass is gone; with M mini-batches it covers (M - 1) / M of the rows.

Exact (the same numbers up to float reordering) where nothing reads the statistics before the update and the
training forward is the no-grad one: `separate_pass_reason` names the regime where it is not, and there the
separate pass stays.
"""
from __future__ import annotations

import torch
from torch import nn

from dynamo_cli.rollout.trajectory import Trajectories


def active_dropout(model: nn.Module) -> list[str]:
    """Dropout that a train-mode forward applies and the eval-mode pass does not (modules, or config rates that
    HF attention applies functionally)."""
    found = [name for name, m in model.named_modules() if isinstance(m, nn.Dropout) and m.p > 0]
    config = getattr(model, "config", None)
    for key, value in (vars(config) if config is not None else {}).items():
        if ("dropout" in key or "pdrop" in key) and isinstance(value, float) and value > 0:
            found.append(f"config.{key}")
    return found


def separate_pass_reason(*, reuse_forward: bool, estimator_reads_old_logprobs: bool, model: nn.Module,
                         off_policy: bool = False) -> str | None:
    """None when the rollout policy's statistics can come from the first training forward; else why they cannot
    (one line, printed by the recipe)."""
    if not reuse_forward:
        return "algorithm.reuse_forward=false"
    if off_policy:  # the batch was sampled by the weights before the last update, not by the ones the update starts from
        return "rollout.one_step_off_policy=true: the behaviour policy is one update behind the trained one"
    if estimator_reads_old_logprobs:  # GAE's per-token KL reward is computed before the update starts
        return "algorithm.kl_in_reward > 0 reads log pi_old in estimate, before the update"
    dropout = active_dropout(model)
    if dropout:
        return f"dropout {dropout[:3]} makes the training forward differ from the no-grad pass"
    return None


def deferred(batch: Trajectories) -> Trajectories:
    """old_logprobs / old_entropy as NaN buffers (N, L) that `update` fills in place: a reader before the update
    sees NaN, never plausible numbers."""
    nan = torch.full(batch.loss_mask.shape, torch.nan)
    return batch.replace(old_logprobs=nan, old_entropy=nan.clone())


def record(batch: Trajectories, rows: torch.Tensor, *, logprobs: torch.Tensor, entropy: torch.Tensor) -> None:
    """Write the rollout policy's (n, L) statistics of `rows` into the batch's buffers (in place: the step's
    Collected batch shares them, and its logs read them after the update)."""
    batch.old_logprobs[rows] = logprobs.detach().to(batch.old_logprobs.device, batch.old_logprobs.dtype)
    batch.old_entropy[rows] = entropy.detach().to(batch.old_entropy.device, batch.old_entropy.dtype)
