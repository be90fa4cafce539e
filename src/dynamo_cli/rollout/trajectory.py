"""The batch every stage after generation works on: one row per trajectory, single- or multi-turn.

    input_ids / attention_mask  (N, T)   prompt (left-padded to `prompt_width`) then the response region
    loss_mask                   (N, L)   the response region, L = T - prompt_width: True on *policy* tokens
    advantages, old_logprobs,   (N, L)   per token of the response region
    old_entropy, ref_logprobs,
    values, returns

`attention_mask` says what the model reads; `loss_mask` says what it is trained on. In today's single-turn
rollouts they agree on the response (one policy turn). A multi-turn environment puts its own tokens (tool
output, the user's next message) inside the response region with attention 1 and loss_mask False, and
records each policy turn's [start, end) column span in `turns`. Per-token tensors cover only the response
region, so the prompt's logits are never computed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from torch import Tensor


@dataclass
class Trajectories:
    input_ids: Tensor  # (N, T)
    attention_mask: Tensor  # (N, T) long: tokens the model attends to
    loss_mask: Tensor  # (N, L) bool: policy tokens, the only ones any loss term sees
    prompt_index: Tensor  # (N,) long: the step's prompt each row answers (alignment by construction)
    prompt_width: int  # the response region starts at this column
    advantages: Optional[Tensor] = None  # (N, L), set by `estimate`
    old_logprobs: Optional[Tensor] = None  # (N, L) log pi_old of each token, at the sampling temperature
    old_entropy: Optional[Tensor] = None  # (N, L) full-vocabulary entropy of pi_old at each position
    ref_logprobs: Optional[Tensor] = None  # (N, L) the frozen reference policy's, when a KL term is on
    values: Optional[Tensor] = None  # (N, L) V_old: the critic's values at collection (PPO + GAE), else None
    returns: Optional[Tensor] = None  # (N, L) the critic's regression targets G_t = A_t + V_t, set by a value-based `estimate`
    extra_mask: Optional[Tensor] = None  # (N, L) bool: tokens a modulator's extra loss term acts on (KL-Cov), set in `update`
    # (N, L) bool: the tokens the policy term trains on, where a modulator dropped some (Fork Tokens, Clip-Cov), set in
    # `update`; None: loss_mask. Every other term, and every denominator, keeps loss_mask
    policy_mask: Optional[Tensor] = None
    row_weight: Optional[Tensor] = None  # (N,) algorithm.loss_agg=group_mean: each row's weight in its mini-batch's loss, set in `update`
    turns: Optional[Tensor] = None  # (N, K, 2) long [start, end) of each policy turn in the response region; None: one turn
    # (N, L) log μ the rollout engine reported for its samples (hf and vLLM; None when it reported none): algorithm.rollout_is,
    # rollout_mask and the rollout/trainer mismatch logged every step (algo/importance.py)
    rollout_logprobs: Optional[Tensor] = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows) -> "Trajectories":
        """The rows `rows` (index tensor or slice) of every per-row tensor."""
        return self._map(lambda t: t[rows])

    def to(self, device) -> "Trajectories":
        return self._map(lambda t: t.to(device))

    def replace(self, **changes) -> "Trajectories":
        return dataclasses.replace(self, **changes)

    def _map(self, fn) -> "Trajectories":
        return Trajectories(**{f.name: (fn(v) if isinstance(v := getattr(self, f.name), Tensor) else v)
                               for f in dataclasses.fields(self)})

    @classmethod
    def single_turn(cls, rollouts) -> "Trajectories":
        """Today's rollouts (rollout.Rollouts): prompt + one completion, the completion is the one policy turn."""
        return cls(input_ids=rollouts.input_ids, attention_mask=rollouts.attention_mask, loss_mask=rollouts.completion_mask,
                   prompt_index=rollouts.prompt_index, prompt_width=rollouts.prompt_width, rollout_logprobs=rollouts.logprobs)

    @classmethod
    def from_rollouts(cls, rollouts) -> "Trajectories":
        """Single- or multi-turn rollouts: the loss mask is the policy's tokens, environment tokens are read only."""
        return cls(input_ids=rollouts.input_ids, attention_mask=rollouts.attention_mask, loss_mask=rollouts.policy_tokens,
                   prompt_index=rollouts.prompt_index, prompt_width=rollouts.prompt_width, turns=rollouts.turns,
                   rollout_logprobs=rollouts.logprobs)


@dataclass
class ModelOutputs:
    """What one forward pass over a micro-batch gives the loss terms, each (n, L) over the response region."""

    logprobs: Tensor  # log pi(token) of the current policy, differentiable
    entropy: Optional[Tensor] = None  # computed only when a term needs it (entropy bonus, some baselines)
    values: Optional[Tensor] = None  # the critic's, when a trainable critic exists

