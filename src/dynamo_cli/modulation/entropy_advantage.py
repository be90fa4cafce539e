"""modulator=entropy_advantage: A + min(α·H, |A|/κ) (Cheng et al., arXiv 2506.14758)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dynamo_cli.algo.masked import masked_mean
from dynamo_cli.config.base import positive
from dynamo_cli.modulation.base import MODULATORS, ModulatorConfig, TokenBaseline, TokenShaping, share_of


@dataclass
class EntropyAdvantageModulatorConfig(ModulatorConfig):
    """Entropy Advantages (Cheng et al., arXiv 2506.14758): A + min(α·H, |A|/κ), H detached."""

    name: str = "entropy_advantage"
    alpha: float = 0.4  # α: advantage bonus per nat of entropy
    kappa: float = 2.0  # κ: the bonus is capped at |A|/κ, so it never flips the advantage's sign

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("modulator.alpha", self.alpha)
        positive("modulator.kappa", self.kappa)


def entropy_advantage(*, advantages: Tensor, entropy: Tensor, mask: Tensor, alpha: float, kappa: float) -> Tensor:
    """A + min(alpha H, |A| / kappa) on valid tokens, 0 on padding (arXiv 2506.14758). (N, L).

    The entropy term is detached (a bonus on the advantage, not an entropy gradient) and capped at |A| / kappa, so
    it never flips the advantage's sign and vanishes where A = 0.
    """
    bonus = torch.minimum(alpha * entropy, advantages.abs() / kappa)  # (N, L), >= 0
    return torch.where(mask, advantages + bonus, 0.0)


@MODULATORS.register("entropy_advantage", schema=EntropyAdvantageModulatorConfig)
class EntropyAdvantageModulator(TokenBaseline):
    """Entropy Advantages (arXiv 2506.14758): A + min(alpha H, |A| / kappa), H the current policy's entropy."""

    def __init__(self, *, alpha: float, kappa: float):
        self.alpha, self.kappa = alpha, kappa

    def shape(self, *, advantages, mask, entropy, logprobs, old_logprobs, generator) -> TokenShaping:
        shaped = entropy_advantage(advantages=advantages, entropy=entropy, mask=mask, alpha=self.alpha, kappa=self.kappa)
        bonus = shaped - advantages  # 0 on padding
        return TokenShaping(advantages=shaped, loss_mask=mask, metrics={
            "mod/entropy_bonus_mean": float(masked_mean(bonus, mask)),
            "mod/entropy_bonus_capped_frac": share_of(mask & (self.alpha * entropy > advantages.abs() / self.kappa), mask)})
