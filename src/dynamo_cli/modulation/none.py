"""modulator=none: sequence advantages used as they are (GRPO's token advantages)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dynamo_cli.modulation.base import MODULATORS, ModulatorConfig, TokenShaping


@dataclass
class NoModulatorConfig(ModulatorConfig):
    """Sequence advantages are used as they are (`scope` has nothing to normalise)."""

    name: str = "none"


@MODULATORS.register("none", schema=NoModulatorConfig)
class NoModulator:
    """Identity: advantages as given (0 on padding), every valid token in the loss."""

    needs_policy_stats = False

    def __call__(self, *, advantages: Tensor, mask: Tensor, **policy_stats) -> TokenShaping:  # reads no policy statistics
        mask = mask.bool()
        return TokenShaping(advantages=torch.where(mask, advantages, 0.0).detach(), loss_mask=mask)
