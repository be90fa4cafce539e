"""Padding: how much of the model's work is on pad positions, and cutting the columns that are padding in every row.

A step's batch is laid out (N, T): prompts left-padded to the longest prompt, responses right-padded to the
longest response (rollout/trajectory.py). A micro-batch rarely holds the longest of both, so its leading and trailing
columns are often padding in every row; `trim_padding` drops them before the forward. That is exact: positions
come from the attention mask (a real token keeps its position) and a pad column is masked out of attention,
so each real token's log-prob and entropy are the same numbers (up to float reordering in a narrower matmul).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dynamo_cli.rollout.trajectory import Trajectories

# Trajectories' (N, L) per-token fields over the response region
RESPONSE_FIELDS = ("loss_mask", "advantages", "old_logprobs", "old_entropy", "ref_logprobs", "values", "returns", "extra_mask",
                   "policy_mask", "rollout_logprobs")


def padding_waste(*, real: float, total: float) -> float:
    """Share of the token positions processed that were padding: 1 - real / total (0 when nothing ran)."""
    return 1.0 - real / total if total > 0 else 0.0


def padding_window(batch: Trajectories) -> tuple[int, int]:
    """[lead, end): the columns of a (n, T) batch that some row reads (attention 1) or trains on (loss_mask): the
    leading prompt columns and trailing response columns outside are padding in every row. lead never passes
    prompt_width, end keeps at least one response column."""
    used = (batch.attention_mask != 0).any(0)  # (T,) columns some row reads
    used[batch.prompt_width:] |= batch.loss_mask.any(0)
    columns = used.nonzero().flatten()
    if len(columns) == 0:
        return 0, batch.input_ids.shape[1]
    return min(int(columns[0]), batch.prompt_width), max(int(columns[-1]) + 1, batch.prompt_width + 1)


def trim_padding(batch: Trajectories, window: tuple[int, int] | None = None) -> Trajectories:
    """The batch restricted to the columns [lead, end) (default: its own `padding_window`). Per-token tensors
    (n, L) lose the same trailing columns; `prompt_width` shrinks by the leading ones, so the response region
    starts at the same token. A window from the unshaped rows also fits them after a modulator dropped tokens."""
    lead, end = padding_window(batch) if window is None else window
    if lead == 0 and end == batch.input_ids.shape[1]:
        return batch
    keep = end - batch.prompt_width  # response columns kept
    per_token = {name: t[:, :keep] for name in RESPONSE_FIELDS if (t := getattr(batch, name)) is not None}
    return batch.replace(input_ids=batch.input_ids[:, lead:end], attention_mask=batch.attention_mask[:, lead:end],
                         prompt_width=batch.prompt_width - lead, **per_token)


def pad_response(t: torch.Tensor, width: int) -> torch.Tensor:
    """(n, L') per-token values back to the batch's response width L with zeros on the trimmed columns."""
    return F.pad(t, (0, width - t.shape[1]))
