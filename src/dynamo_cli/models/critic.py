"""The critic of PPO + GAE: a value function V(s_t) before each completion token, two ways (the `critic` group).

    separate  the policy's architecture with a scalar value head: a Hugging Face *ForTokenClassification model with
              num_labels=1 (the policy's trunk, a Linear(hidden, 1) `score` head), so a checkpoint's `critic/` dir
              loads with AutoModelForTokenClassification and no dynamo code. At the start of a run it copies the
              policy's trunk weights (verl and OpenRLHF initialise the critic from the actor).
    shared    a Linear(hidden, 1) head on the *policy's* last hidden state (PPO's shared network, TRL's
              ...WithValueHead): no second model, the value comes out of the policy's own training forward, and the
              value loss (times critic.value_coef) trains the policy's trunk too. Saved as critic/value_head.safetensors.

Each is an object with `module` (trained as the Trainable "critic", saved in <checkpoint>/critic/), `values` (the
differentiable values of a micro-batch, in the update) and `old_values` (V_old at collection, without gradients).
After a resume the critic is the saved one, exactly.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from dynamo_cli.config.algorithm import OptimConfig
from dynamo_cli.config.critic import NoCriticConfig, SeparateCriticConfig, SharedCriticConfig
from dynamo_cli.errors import DynamoError
from dynamo_cli.models import precision
from dynamo_cli.models.optim import make_optimizer
from dynamo_cli.models.trainable import Trainable
from dynamo_cli.registry import Registry
from dynamo_cli.rollout.hf import position_ids_from_mask
from dynamo_cli.rollout.policy_stats import completion_forward, in_eval_chunks

CRITICS = Registry("critic")  # the value function a run trains beside the policy (algorithm.advantage=gae), or none

def make_critic(policy: torch.nn.Module, device: torch.device, *, resume_from: Optional[Path] = None) -> torch.nn.Module:
    """A value model: `resume_from/critic` when resuming, else the policy's trunk with a fresh head (seeded by the
    global torch RNG). The head reads the trunk's last hidden state with no dropout (old and new values agree)."""
    from transformers import AutoModelForTokenClassification  # here, not at import: `dynamo --help` and config errors stay fast

    from dynamo_cli.models.load import is_peft_model

    if resume_from is not None:  # it computes as the policy does (mixed precision: models/precision.py)
        return precision.mark(AutoModelForTokenClassification.from_pretrained(Path(resume_from) / "critic").to(device),
                              precision.marked_dtype(policy))
    base = policy.get_base_model() if is_peft_model(policy) else policy  # under LoRA: the base weights, all trainable
    config = copy.deepcopy(base.config)
    config.num_labels, config.classifier_dropout = 1, 0.0
    critic = precision.mark(AutoModelForTokenClassification.from_config(config, dtype=base.dtype), precision.marked_dtype(policy))
    prefix = critic.base_model_prefix + "."
    trunk = {key[len(prefix):].replace(".base_layer.", "."): value for key, value in base.state_dict().items()
             if key.startswith(prefix) and "lora_" not in key}
    getattr(critic, critic.base_model_prefix).load_state_dict(trunk)
    return critic.to(device)


def completion_values(critic: torch.nn.Module, *, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      prompt_width: int) -> torch.Tensor:
    """(N, L) V(s_t) before each response token t: the head at the position that predicts token t, the same
    alignment as the policy's log-probs (policy.completion_token_stats). Differentiable."""
    with precision.autocast(critic):
        out = critic(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask))
    return out.logits[:, prompt_width - 1:-1, 0].float()  # (N, L)


def batched_values(critic: torch.nn.Module, *, input_ids, attention_mask, prompt_width: int, micro_batch_size: int) -> torch.Tensor:
    """`completion_values` without gradients, in micro-batches: V_old, the values GAE and the value clip start from."""
    return torch.cat(in_eval_chunks(critic, lambda rows: completion_values(
        critic, input_ids=input_ids[rows], attention_mask=attention_mask[rows], prompt_width=prompt_width),
        rows=input_ids.shape[0], chunk=micro_batch_size))


class SeparateCritic:
    """critic=separate: its own model; the policy's hidden state is not read."""

    reads_policy_hidden = False

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def values(self, module, *, input_ids, attention_mask, prompt_width: int, hidden=None) -> torch.Tensor:
        """(N, L) differentiable values; `module` is the engine's wrapper of self.module (DDP syncs its gradient)."""
        return completion_values(module, input_ids=input_ids, attention_mask=attention_mask, prompt_width=prompt_width)

    def old_values(self, *, policy, input_ids, attention_mask, prompt_width: int, micro_batch_size: int) -> torch.Tensor:
        return batched_values(self.module, input_ids=input_ids, attention_mask=attention_mask, prompt_width=prompt_width,
                              micro_batch_size=micro_batch_size)


VALUE_HEAD_FILE, VALUE_HEAD_CONFIG = "value_head.safetensors", "value_head.json"


class ValueHead(torch.nn.Module):
    """Linear(hidden, 1) over the policy's last hidden state -> (N, L) float values. Initialised as OpenRLHF's value
    head: weights N(0, 1/(hidden + 1)), bias 0, so the first values are near 0."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.score = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.normal_(self.score.weight, std=1.0 / (hidden_size + 1))
        torch.nn.init.zeros_(self.score.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(hidden.to(self.score.weight.dtype)).squeeze(-1).float()

    def save_pretrained(self, directory, **_) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(directory / VALUE_HEAD_FILE))
        (directory / VALUE_HEAD_CONFIG).write_text(json.dumps({"hidden_size": self.hidden_size}))

    @classmethod
    def from_pretrained(cls, directory) -> "ValueHead":
        directory = Path(directory)
        state = load_file(str(directory / VALUE_HEAD_FILE))
        head = cls(json.loads((directory / VALUE_HEAD_CONFIG).read_text())["hidden_size"]).to(state["score.weight"].dtype)
        head.load_state_dict(state)  # in the dtype it was saved in (a bf16 run's head resumes in bf16)
        return head


def make_value_head(policy: torch.nn.Module, device: torch.device, *, resume_from: Optional[Path] = None) -> ValueHead:
    """A fresh head sized to the policy's hidden state (seeded by the global torch RNG), or the saved one when resuming."""
    from dynamo_cli.models.load import is_peft_model  # transformers loads only when a critic is built

    if resume_from is not None:
        return ValueHead.from_pretrained(Path(resume_from) / "critic").to(device)
    base = policy.get_base_model() if is_peft_model(policy) else policy
    return ValueHead(base.config.hidden_size).to(device=device, dtype=base.dtype)


class SharedCritic:
    """critic=shared: a ValueHead on the policy's last hidden state, which the update's policy forward returns."""

    reads_policy_hidden = True

    def __init__(self, head: ValueHead):
        self.module = head

    def values(self, module, *, hidden, **_) -> torch.Tensor:
        """(N, L) values of the policy forward's `hidden` (N, L, H): differentiable in the head and, when the policy
        forward kept its graph, in the policy's trunk."""
        return module(hidden)

    def old_values(self, *, policy, input_ids, attention_mask, prompt_width: int, micro_batch_size: int) -> torch.Tensor:
        return torch.cat(in_eval_chunks(policy, lambda rows: self.module(completion_forward(
            policy, input_ids=input_ids[rows], attention_mask=attention_mask[rows], prompt_width=prompt_width, temperature=1.0,
            with_entropy=False, with_hidden=True).hidden), rows=input_ids.shape[0], chunk=micro_batch_size))


@CRITICS.register("none", schema=NoCriticConfig)
def no_critic() -> None:
    return None


@CRITICS.register("separate", schema=SeparateCriticConfig)
def separate_critic(*, policy, device, resume_from: Optional[Path]) -> SeparateCritic:
    return SeparateCritic(make_critic(policy, device, resume_from=resume_from))


@CRITICS.register("shared", schema=SharedCriticConfig)
def shared_critic(*, policy, device, resume_from: Optional[Path]) -> SharedCritic:
    return SharedCritic(make_value_head(policy, device, resume_from=resume_from))


def critic_trainables(cfg, critic, *, dp, total_steps: int, micro_batch_size: int) -> list[Trainable]:
    """[the critic as a Trainable: its own AdamW (critic.lr), schedule, grad clip and DDP wrap], or [] without one.
    `cfg`: the critic's schema."""
    if critic is None:
        return []
    if dp.sharded:
        raise DynamoError(f"critic={cfg.name} under FSDP2 is not supported: run it on one process or under DDP (conf/accelerate/ddp.yaml)")
    if dp.deepspeed:
        raise DynamoError(f"critic={cfg.name} runs on one process or under DDP (conf/accelerate/ddp.yaml); DeepSpeed "
                          "prepares a single model per run")
    optimizer, scheduler = make_optimizer(critic.module, OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                                     warmup_steps=cfg.lr_warmup_steps, grad_clip=cfg.grad_clip),
                                          total_steps=total_steps)
    module, optimizer = dp.prepare(critic.module, optimizer, micro_batch_size=micro_batch_size)
    return [Trainable("critic", module, optimizer, scheduler, grad_clip=cfg.grad_clip, solo_steps=cfg.warmup_steps)]
