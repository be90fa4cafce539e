"""modulator=fork_tokens: the policy gradient only on the highest-entropy tokens (Wang et al., arXiv 2506.01939)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dynamo_cli.config.base import check
from dynamo_cli.modulation.base import MODULATORS, ModulatorConfig, TokenBaseline, TokenShaping, share_of


@dataclass
class ForkTokensModulatorConfig(ModulatorConfig):
    """Fork Tokens (Wang et al., arXiv 2506.01939): the policy gradient only on the highest-entropy tokens."""

    name: str = "fork_tokens"
    top_fraction: float = 0.2  # share of a mini-batch's valid tokens kept, by entropy (the paper's top 20%)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.top_fraction <= 1, f"modulator.top_fraction={self.top_fraction} must be in (0, 1]")


# ------------------------------------------------------------------ the paper's token-level baselines
# Each is a modulator: it sees a mini-batch's (N, L) advantages, valid-token mask and the current policy's
# entropies / log-probs, once before its micro-batches, and returns TokenShaping. A token dropped from the loss
# mask passes no gradient through any term; the mini-batch's token count (the token-mean denominator) is taken
# before shaping, so dropping a token does not reweight the others. Selection is over this process's valid tokens.


def top_fraction_mask(*, values: Tensor, mask: Tensor, fraction: float) -> Tensor:
    """Valid tokens whose value is at or above the (1 - fraction) quantile of the valid values. (N, L) bool.

    Fork Tokens (arXiv 2506.01939) keep the top 20% highest-entropy tokens. torch.quantile interpolates
    linearly, so ties at the threshold are all kept. No valid token: nothing selected.
    """
    valid = values[mask]  # (M,)
    if valid.numel() == 0:
        return torch.zeros_like(mask)
    threshold = torch.quantile(valid, 1 - fraction)
    return mask & (values >= threshold)


@MODULATORS.register("fork_tokens", schema=ForkTokensModulatorConfig)
class ForkTokensModulator(TokenBaseline):
    """Fork Tokens (arXiv 2506.01939): the policy gradient only on the top `top_fraction` highest-entropy tokens."""

    def __init__(self, *, top_fraction: float):
        self.top_fraction = top_fraction

    def shape(self, *, advantages, mask, entropy, logprobs, old_logprobs, generator) -> TokenShaping:
        keep = top_fraction_mask(values=entropy, mask=mask, fraction=self.top_fraction)
        return TokenShaping(advantages=torch.where(keep, advantages, 0.0), loss_mask=keep,
                            metrics={"mod/kept_frac": share_of(keep, mask)}, distributions={"kept_entropy": entropy[keep]})
