"""A trainable module: the model (as the engine wrapped it), its optimiser and schedule, its checkpoint state.

The trainer holds a list of them: the policy first, then an optional critic (PPO + GAE, models/critic.py) with its own
optimiser, scheduler, DDP wrap and checkpoint dir. `update` steps each one after every mini-batch; during a
critic's warm-up (its `solo_steps`) only the critic trains.

trainer_state.pt keeps the policy's optimiser and scheduler under "optimizer" / "scheduler" (as before the
redesign); any other module's go under "trainables"/<name>, and its weights in the checkpoint's <name>/ dir.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dynamo_cli.runtime.distributed import DataParallel


@dataclass
class Trainable:
    name: str  # "policy" | "critic"
    model: Any  # the engine's wrapper (DDP / DeepSpeed) around the module; dp.unwrap(model) is the module
    optimizer: Any
    scheduler: Any
    grad_clip: float  # max global gradient norm; 0 = off
    solo_steps: int = 0  # the first RL steps in which this module trains alone (critic.warmup_steps: the policy waits)

    def step(self, dp: DataParallel) -> float:
        """Clip, step the optimiser and the schedule, clear the gradients. Returns the norm before clipping."""
        norm = self.clip(dp)
        self.apply()
        return norm

    def clip(self, dp: DataParallel) -> float:
        """Clip the accumulated gradient in place; the global norm before clipping (NaN/Inf: see runtime/guard.py)."""
        return dp.clip_gradients(self.model, self.grad_clip)

    def apply(self) -> None:
        """Step the optimiser and the schedule on the (clipped) gradient, then clear it."""
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def discard(self) -> None:
        """Drop the gradient of a skipped (non-finite) step: weights, optimiser state and schedule stay as they were."""
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def trainables_state(trainables: list[Trainable]) -> dict[str, Any]:
    """The policy's state at the top level (the checkpoint layout of every earlier run), the others by name."""
    policy, *others = trainables
    return {**policy.state_dict(), "trainables": {t.name: t.state_dict() for t in others}}


def load_trainables_state(trainables: list[Trainable], state: dict[str, Any]) -> None:
    policy, *others = trainables
    policy.load_state_dict(state)
    for t in others:
        t.load_state_dict(state["trainables"][t.name])
