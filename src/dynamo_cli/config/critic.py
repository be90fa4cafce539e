"""critic schemas."""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from dynamo_cli.config.base import GroupConfig, check, positive


# ------------------------------------------------------------------------------------------ critic
@dataclass
class CriticConfig(GroupConfig):
    """Fields every critic option shares."""

    name: str = MISSING


@dataclass
class NoCriticConfig(CriticConfig):
    """No value function: the group estimators (grpo, drgrpo, rloo) use the group's mean reward as the baseline."""

    name: str = "none"

    def check_run(self, run) -> None:
        check(run.algorithm.advantage != "gae", "algorithm.advantage=gae needs a critic; choose one of: critic=separate, critic=shared")


@dataclass
class LearnedCriticConfig(CriticConfig):
    """Fields of a learned value function (algorithm.advantage=gae): its optimiser, warm-up and value loss."""

    lr: float = 1.0e-4  # the critic's AdamW lr (verl's PPO recipes run the critic at 10x the actor's 1e-6)
    weight_decay: float = 0.0
    warmup_steps: int = 0  # RL steps at the start in which only the critic trains (verl's critic_warmup, default 0)
    lr_warmup_steps: int = 0  # linear lr warm-up of the critic's optimiser, in optimiser steps
    grad_clip: float = 1.0  # max gradient norm of the critic; 0 disables clipping
    value_clip: float = 0.2  # ε_v: |V − V_old| clip (PPO, Schulman et al. 2017, as baselines' ppo2; verl: 0.5); 0: off
    value_coef: float = 1.0  # weight of the value loss

    def __post_init__(self) -> None:
        positive("critic.lr", self.lr)
        positive("critic.weight_decay", self.weight_decay, strict=False)
        positive("critic.warmup_steps", self.warmup_steps, strict=False)
        positive("critic.lr_warmup_steps", self.lr_warmup_steps, strict=False)
        positive("critic.grad_clip", self.grad_clip, strict=False)
        positive("critic.value_clip", self.value_clip, strict=False)
        positive("critic.value_coef", self.value_coef)

    def check_run(self, run) -> None:
        check(run.algorithm.advantage == "gae", f"critic={self.name} trains a value function that algorithm.advantage="
              f"{run.algorithm.advantage} never reads; choose algorithm.advantage=gae or critic=none")


@dataclass
class SeparateCriticConfig(LearnedCriticConfig):
    """PPO's learned value function (algorithm.advantage=gae): a copy of the policy's trunk with a scalar head
    (a *ForTokenClassification model, num_labels=1), its own AdamW and schedule, saved in <checkpoint>/critic/.
    Separate rather than a head on the policy's trunk, as verl and OpenRLHF do: the value loss never pulls on the
    policy's weights, and the two learning rates stay independent (the cost: a second model's memory and forward).
    value_coef only scales the critic's own gradient here."""

    name: str = "separate"


@dataclass
class SharedCriticConfig(LearnedCriticConfig):
    """A value head (Linear(hidden, 1)) on the policy's last hidden state: one model, one forward for log-probs and
    values in the update; the value loss, times value_coef, also trains the policy's trunk (lr: critic.lr for the
    head, optim.lr for the trunk; the policy's grad norm and clip include the value gradient). value_coef 0.5 as
    PPO's shared-network c1 (Schulman et al. 2017; OpenAI baselines' vf_coef). Saved in <checkpoint>/critic/."""

    name: str = "shared"
    value_coef: float = 0.5
