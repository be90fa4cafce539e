"""When a step's rollouts are generated, relative to the update that learns from them (`rollout.one_step_off_policy`).

    on-policy           step t: collect(t) with θ_{t-1} -> update -> θ_t
    one-step-off-policy step t: take collect(t), generated during step t-1's update with θ_{t-2};
                                start collect(t+1) with θ_{t-1} in a background thread -> update -> θ_t -> wait

The off-policy schedule overlaps the next step's generation (and its old log-probs) with this step's update, as
verl's one-step-off-policy recipe does; the price is that the update starts from weights one optimiser step newer
than the ones that sampled the batch (`rollout/staleness`: 1 from step 2 on, 0 on-policy). PPO's ratio is then taken
against the behaviour policy, whose log-probs the background collect computes on its frozen copy of the weights.

Both schedules share one interface, so the training loop has no branch for either:
    take(step) -> Collected   this step's data
    prefetch(step)            off-policy: start collecting `step` now (on-policy: nothing)
    settle()                  off-policy: wait for the prefetch, so eval, logs and checkpoints run alone
    state_dict / load_state_dict   the prefetched batch travels in the checkpoint: resume is exact
The allocator and sampler learn from step t (Collector.learn) before collect(t+1) starts, in both schedules.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Optional

import torch

from dynamo_cli.stages.collect import Collected, Collector


class OnPolicy:
    """Collect each step's rollouts when the step starts, with the current weights."""

    def __init__(self, collect: Collector):
        self.collect = collect

    def take(self, step: int) -> Collected:
        data = self.collect(step)
        data.metrics["rollout/staleness"] = 0.0
        return data

    def prefetch(self, step: int) -> None:
        pass

    def settle(self) -> None:
        pass

    def close(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """target's parameters and buffers := source's (same architecture), in place."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters(), strict=True):
            t.copy_(s)
        for t, s in zip(target.buffers(), source.buffers(), strict=True):
            t.copy_(s)


def behaviour_copy(policy: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the policy for the background collect to sample and score with."""
    behaviour = copy.deepcopy(policy)
    behaviour.requires_grad_(False)
    return behaviour.eval()


class OneStepOffPolicy:
    """Collect step t+1 in a background thread, on a copy of θ_{t-1}, while step t's update runs.

    `collect` must have been built on `behaviour` (its engine generates with it, its old log-probs come from it)
    and, with several processes, on a side channel of its own (DataParallel.side_channel: its collectives run
    while the update's do); `policy` is the module the update trains."""

    def __init__(self, collect: Collector, *, policy: torch.nn.Module, behaviour: torch.nn.Module):
        self.collect, self.policy, self.behaviour = collect, policy, behaviour
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collect")
        self.pending: Optional[tuple[int, Future]] = None  # (step, its collect)
        self.ready: Optional[tuple[int, Collected]] = None  # a settled prefetch, or one restored from a checkpoint
        self.wait_seconds = 0.0

    def take(self, step: int) -> Collected:
        self.settle()
        if self.ready is not None and self.ready[0] == step:
            data, staleness = self.ready[1], 1.0  # sampled by the weights before the last update
        else:  # the first step (or a resume from a checkpoint without a prefetch): nothing was collected ahead
            copy_weights(self.policy, self.behaviour)
            data, staleness = self.collect(step), 0.0
        self.ready = None
        data.metrics["rollout/staleness"] = staleness
        data.metrics["time/prefetch_wait_s"] = self.wait_seconds
        self.wait_seconds = 0.0
        return data

    def prefetch(self, step: int) -> None:
        copy_weights(self.policy, self.behaviour)  # θ_{t-1}: the update that follows does not touch the copy
        self.pending = (step, self.pool.submit(self.collect, step))

    def settle(self) -> None:
        if self.pending is not None:
            step, future = self.pending
            self.pending = None
            t0 = time.perf_counter()
            self.ready = (step, future.result())  # an error in the background collect is raised here
            self.wait_seconds += time.perf_counter() - t0

    def close(self) -> None:
        self.settle()
        self.pool.shutdown(wait=True)

    def state_dict(self) -> dict[str, Any]:
        """The settled prefetch (the next step's data); its ids without the pool reference (the same ids)."""
        self.settle()
        if self.ready is None:
            return {}
        step, data = self.ready
        return {"step": step, "collected": dataclasses.replace(data, ids=list(data.prompt_ids))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ready = (state["step"], state["collected"]) if state else None
