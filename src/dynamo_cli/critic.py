"""The critic of PPO + GAE (`critic=separate`): the policy's architecture with a scalar value head.

It is a Hugging Face *ForTokenClassification model with num_labels=1 (the policy's trunk, a Linear(hidden, 1)
`score` head), so a checkpoint's `critic/` dir loads with AutoModelForTokenClassification and no dynamo code.
At the start of a run it copies the policy's trunk weights (verl and OpenRLHF initialise the critic from the
actor); after a resume it is the saved critic, exactly.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import torch
from transformers import AutoModelForTokenClassification

from dynamo_cli.models import is_peft_model
from dynamo_cli.rollout import position_ids_from_mask


def make_critic(policy: torch.nn.Module, device: torch.device, *, resume_from: Optional[Path] = None) -> torch.nn.Module:
    """A value model: `resume_from/critic` when resuming, else the policy's trunk with a fresh head (seeded by the
    global torch RNG). The head reads the trunk's last hidden state with no dropout (old and new values agree)."""
    if resume_from is not None:
        return AutoModelForTokenClassification.from_pretrained(Path(resume_from) / "critic").to(device)
    base = policy.get_base_model() if is_peft_model(policy) else policy  # under LoRA: the base weights, all trainable
    config = copy.deepcopy(base.config)
    config.num_labels, config.classifier_dropout = 1, 0.0
    critic = AutoModelForTokenClassification.from_config(config, dtype=base.dtype)
    prefix = critic.base_model_prefix + "."
    trunk = {key[len(prefix):].replace(".base_layer.", "."): value for key, value in base.state_dict().items()
             if key.startswith(prefix) and "lora_" not in key}
    getattr(critic, critic.base_model_prefix).load_state_dict(trunk)
    return critic.to(device)


def completion_values(critic: torch.nn.Module, *, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      prompt_width: int) -> torch.Tensor:
    """(N, L) V(s_t) before each response token t: the head at the position that predicts token t, the same
    alignment as the policy's log-probs (policy.completion_token_stats). Differentiable."""
    out = critic(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask))
    return out.logits[:, prompt_width - 1:-1, 0].float()  # (N, L)


@torch.no_grad()
def batched_values(critic: torch.nn.Module, *, input_ids, attention_mask, prompt_width: int, micro_batch_size: int) -> torch.Tensor:
    """`completion_values` without gradients, in micro-batches: V_old, the values GAE and the value clip start from."""
    was_training = critic.training
    critic.eval()
    values = [completion_values(critic, input_ids=input_ids[rows], attention_mask=attention_mask[rows], prompt_width=prompt_width)
              for rows in (slice(s, s + micro_batch_size) for s in range(0, input_ids.shape[0], micro_batch_size))]
    critic.train(was_training)
    return torch.cat(values)
