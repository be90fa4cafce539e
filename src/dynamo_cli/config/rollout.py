"""rollout schemas."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from dynamo_cli.config.base import GroupConfig, check, check_batch_size, positive


# --------------------------------------------------------------------------------------- rollouts
@dataclass
class RolloutConfig(GroupConfig):
    """Fields every rollout backend shares."""

    name: str = MISSING  # the backend: hf | vllm
    n: int = 8  # mean rollouts per prompt: the step's budget is B = n × trainer.prompts_per_step
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: Optional[int] = None  # None: the task's max_new_tokens
    max_batch_size: Any = "auto"  # sequences generated at once; auto: as many as fit in memory (runtime/resources.py)
    # generate step t+1 during step t's update, on a copy of the weights before it (stages/schedule.py; verl's
    # one-step-off-policy): faster where generation and update can overlap, one optimiser step stale
    one_step_off_policy: bool = False

    def __post_init__(self) -> None:
        positive("rollout.n", self.n)
        positive("rollout.temperature", self.temperature)
        check(0 < self.top_p <= 1, f"rollout.top_p={self.top_p} must be in (0, 1]")
        if self.max_new_tokens is not None:
            positive("rollout.max_new_tokens", self.max_new_tokens)
        check_batch_size("rollout.max_batch_size", self.max_batch_size)

    def check_run(self, run) -> None:
        check(not self.one_step_off_policy or run.critic.name == "none",
              f"rollout.one_step_off_policy=true with critic={run.critic.name}: the critic's V_old would be read while the update "
              "trains it; use critic=none or one_step_off_policy=false")


@dataclass
class HFRolloutConfig(RolloutConfig):
    """Batched generation with a KV cache in the training process, on the policy itself (rollout/hf.py)."""

    name: str = "hf"

    def check_run(self, run) -> None:
        super().check_run(run)
        check(run.algorithm.rollout_is == "none",
              f"algorithm.rollout_is={run.algorithm.rollout_is} corrects the rollout engine's log-probs against the trainer's; "
              f"rollout={self.name} samples with the trainer's own model and reports none: use rollout=vllm or rollout_is=none")


@dataclass
class VLLMRolloutConfig(RolloutConfig):
    """Generation with vLLM in the training process, on the same GPU; the policy's weights are copied into
    vLLM after every update (rollout/vllm.py). Needs `pip install 'dynamo-cli[vllm]'` and CUDA."""

    name: str = "vllm"
    gpu_memory_utilization: float = 0.3  # share of the GPU vLLM takes for weights + KV cache; the rest trains
    enforce_eager: bool = False  # True: no CUDA graphs (starts faster, generates slower)
    max_model_len: Optional[int] = None  # None: longest prompt + max_new_tokens
    # vLLM's sleep mode between generation and training: 0 off; 1 weights to host memory + KV cache freed; 2 both freed
    # (the next weight sync reloads them: the cheaper one when, as here, every step syncs)
    sleep_level: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.sleep_level in (0, 1, 2), f"rollout.sleep_level={self.sleep_level} is not allowed; choose one of: 0, 1, 2")
        check(0 < self.gpu_memory_utilization < 1, f"rollout.gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1)")
        if self.max_model_len is not None:
            positive("rollout.max_model_len", self.max_model_len)

    def check_run(self, run) -> None:
        super().check_run(run)
        check(not self.one_step_off_policy,
              f"rollout.one_step_off_policy=true is built for rollout=hf only (a background thread on a copy of the weights); "
              f"rollout={self.name} would need its engine to generate during the update: use rollout=hf or one_step_off_policy=false")
