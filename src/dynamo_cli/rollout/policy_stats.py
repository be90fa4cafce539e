"""Forward passes of the policy over completions: per-token log-probs and full-vocabulary entropies."""
from __future__ import annotations

from typing import NamedTuple

import torch

from dynamo_cli.algo.logits import entropy_from_logits, logprobs_from_logits
from dynamo_cli.models import precision
from dynamo_cli.rollout.hf import position_ids_from_mask


class CompletionForward(NamedTuple):
    logprobs: torch.Tensor  # (N, Tc) of the completion tokens
    entropy: torch.Tensor | None  # (N, Tc) of the full next-token distribution, or None
    hidden: torch.Tensor | None  # (N, Tc, H) the last hidden state at the position that predicts each completion token


def completion_forward(model, *, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int, temperature: float,
                       with_entropy: bool = True, detached_entropy: bool = False, with_hidden: bool = False) -> CompletionForward:
    """One forward of the policy over completions: log-probs, optionally entropies (at the sampling temperature) and
    the last hidden state aligned with them (critic=shared reads its values off it). Differentiable: call under
    torch.no_grad() for old/reference log-probs. `detached_entropy` (with with_entropy=False): the entropy anyway,
    without a graph (the rollout policy's, read off a training forward)."""
    completion_width = input_ids.shape[1] - prompt_width
    with precision.autocast(model):  # model.dtype over float32 masters (models/precision.py); nothing otherwise
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
                    logits_to_keep=completion_width + 1, output_hidden_states=with_hidden)
    logits = out.logits[:, :-1].float() / temperature  # (N, Tc, V): position t predicts token t + 1, in float32
    logprobs = logprobs_from_logits(logits, input_ids[:, prompt_width:])
    entropy = entropy_from_logits(logits) if with_entropy else None
    if entropy is None and detached_entropy:
        with torch.no_grad():
            entropy = entropy_from_logits(logits.detach())
    hidden = out.hidden_states[-1][:, prompt_width - 1:-1] if with_hidden else None
    return CompletionForward(logprobs, entropy, hidden)


def completion_token_stats(model, *, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                           temperature: float, with_entropy: bool = True,
                           detached_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs (N, Tc), entropy (N, Tc) or None) of `completion_forward`."""
    forward = completion_forward(model, input_ids=input_ids, attention_mask=attention_mask, prompt_width=prompt_width,
                                 temperature=temperature, with_entropy=with_entropy, detached_entropy=detached_entropy)
    return forward.logprobs, forward.entropy


@torch.no_grad()
def in_eval_chunks(model, fn, *, rows: int, chunk: int) -> list:
    """[fn(slice) for consecutive slices of `chunk` of `rows` rows], without gradients and with `model` in eval mode
    (its mode restored after): the micro-batched no-grad passes (old and reference log-probs, V_old)."""
    was_training = model.training
    model.eval()
    try:
        return [fn(slice(start, start + chunk)) for start in range(0, rows, chunk)]
    finally:
        model.train(was_training)


def batched_token_stats(model, *, input_ids, attention_mask, prompt_width: int, temperature: float,
                        micro_batch_size: int, with_entropy: bool = True):
    """`completion_token_stats` without gradients, in micro-batches (for old and reference log-probs)."""
    parts = in_eval_chunks(model, lambda rows: completion_token_stats(
        model, input_ids=input_ids[rows], attention_mask=attention_mask[rows], prompt_width=prompt_width, temperature=temperature,
        with_entropy=with_entropy), rows=input_ids.shape[0], chunk=micro_batch_size)
    return torch.cat([lp for lp, _ in parts]), (torch.cat([ent for _, ent in parts]) if with_entropy else None)
