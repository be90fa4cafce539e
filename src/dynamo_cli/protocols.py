"""The contracts of dynamo's swappable parts. A part implements one of these and registers a builder for its
config name (registry.py); the stages (stages/) only ever call these methods.

Shapes: P prompts in a step, B rollouts in the step (all processes), N rollouts on this process, L positions
of the response region (every position after the prompt; see rollout/trajectory.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Protocol, runtime_checkable

from torch import Generator, Tensor

if TYPE_CHECKING:  # annotations only: the parts import these contracts, so the contracts must not import the parts
    from dynamo_cli.allocation.base import Allocation
    from dynamo_cli.modulation.base import ScopeSync, TokenShaping
    from dynamo_cli.rollout.hf import Rollouts
    from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories


class Sampler(Protocol):
    """Which training problems step `step` (1-based) draws. A pure function of (step, its own state): resumable."""

    def prompt_indices(self, step: int, *, num_problems: int, per_step: int) -> list[int]: ...

    def more(self, step: int, *, num_problems: int, count: int) -> list[int]:
        """`count` fresh problems for the same step (a round allocator asked for them), continuing its draw."""

    def update(self, prompt_ids: list[str], *, rewards: Tensor, group_index: Tensor) -> None:
        """After a step's rewards are known (a curriculum re-weights here; uniform does nothing)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Allocator(Protocol):
    """How many rollouts each drawn prompt gets: (P,) counts summing to the step's budget."""

    def allocate(self, prompt_ids: list[str]) -> Allocation: ...

    def update(self, prompt_ids: list[str], *, successes: Tensor, attempts: Tensor) -> None: ...

    def history(self, prompt_ids: list[str]) -> tuple[Tensor, Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class RoundAllocator(Allocator, Protocol):
    """An allocator that looks at a round's rewards and may ask for another round within the same step
    (DAPO's dynamic sampling, GRESO). `collect` calls `next_round` with every round's rewards and prompt index
    so far (all processes) until it returns None or an Allocation that asks for nothing; a returned Allocation's
    counts (P,) are *extra* rollouts for the step's prompts so far, and with `fresh` = k > 0 the sampler draws k
    new prompts (`Sampler.more`) whose rollouts `allocate` decides. Every round's total must split evenly over
    the processes. The Allocation that ends the rounds may carry `keep` (P,) bool: only those groups' rollouts
    enter the loss (the rest stay in the batch with an empty loss mask, counted in the budget). `update` then
    sees the summed counts of every prompt drawn."""

    def next_round(self, prompt_ids: list[str], *, rewards: Tensor, group_index: Tensor, round: int) -> Optional[Allocation]: ...


class RolloutEngine(Protocol):
    """Generation only: prompts x counts -> Rollouts (no rewards) with the engine's log-prob of each sampled token.
    `release` once a step's generation is over (all its rounds), before the update; `sync` after every policy update.
    `streams` (N,): each row's counter stream (None: 0..N-1); `seed=None` or temperature 0: greedy."""

    def generate(self, prompts: list[str], *, counts: Tensor, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int | None, max_batch_size: int, streams: Optional[Tensor] = None) -> Rollouts: ...

    def release(self) -> None: ...

    def sync(self, policy: Any) -> None: ...


class AdvantageEstimator(Protocol):
    """estimate: rewards (B,) of the whole step (every process) -> per-token advantages of this process's rows.

    `rows` = [lo, hi): this process's share. Group estimators need the whole group, hence the global rewards;
    a value-based one (GAE) reads `batch.values`. Returns (advantages (N, L), 0 off the loss mask; the critic's
    targets (N, L), None without a critic; sequence advantages (B,) for logs; zero_signal (B,) bool)."""

    def __call__(self, batch: Trajectories, *, rewards: Tensor, group_index: Tensor, num_groups: int,
                 rows: slice) -> tuple[Tensor, Optional[Tensor], Tensor, Tensor]: ...


class Modulator(Protocol):
    """Token-level shaping inside `update`, once per mini-batch: advantages (N, L) -> TokenShaping (advantages,
    loss mask, and optionally extra loss terms with the tokens they act on). `needs_policy_stats`: wants the current
    policy's entropy and log-probs (a forward pass) rather than the rollout policy's. `generator`: the step's, for
    any random choice (replayable)."""

    needs_policy_stats: bool

    def __call__(self, *, advantages: Tensor, mask: Tensor, entropy: Tensor | None = None, logprobs: Tensor | None = None,
                 old_logprobs: Tensor | None = None, scope_index: Tensor | None = None,
                 scope_sync: ScopeSync | None = None, generator: Generator | None = None) -> TokenShaping: ...


class LossTerm(Protocol):
    """One term of the loss: (batch, model outputs) -> (per-token loss (n, L), per-token metrics).

    `Loss` (algo/terms.py) aggregates the per-token loss over `batch.loss_mask` (token or sequence mean), weights it,
    logs the aggregate as `train/<name>`, and logs every metric as its token mean over the loss mask.
    `needs`: the ModelOutputs fields it reads beyond log-probs (e.g. {"entropy"}, {"values"})."""

    name: str
    needs: frozenset[str]

    def __call__(self, batch: Trajectories, out: ModelOutputs) -> tuple[Tensor, dict[str, Tensor]]: ...
