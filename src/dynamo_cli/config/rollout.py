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
        from dynamo_cli.config.task import EnvironmentTaskConfig

        correction = next((f"algorithm.{key}={value}" for key in ("rollout_is", "rollout_mask")
                           if (value := getattr(run.algorithm, key)) != "none"), None)
        check(correction is None or not isinstance(run.task, EnvironmentTaskConfig),
              f"{correction} with task={run.task.name}: a multi-turn episode's engine reports no log-probs for its turns; "
              "use rollout_is=none and rollout_mask=none")


@dataclass
class HFRolloutConfig(RolloutConfig):
    """Batched generation with a KV cache in the training process, on the policy itself, or on a copy of it in model.dtype
    under mixed precision (rollout/hf.py)."""

    name: str = "hf"
    # with a LoRA adapter: generate (and evaluate) on a copy with the adapter merged into the weights, refreshed after each
    # update; one more copy of the base weights in memory for ~1.5x faster generation on CPU; false: through the adapter
    merge_lora: bool = True


def vllm_logprobs_mode(*, temperature: float, top_p: float) -> Optional[str]:
    """The vLLM `logprobs_mode` whose sampled-token log-probs are the trainer's log-softmax(logits / temperature), without
    top-p: raw_logprobs (before any processing) at temperature 1, processed_logprobs (after temperature and top-p) at top_p 1.
    None: no mode compares like with like (the engine's would be renormalised after top-p, the trainer's are not)."""
    if temperature == 1.0:
        return "raw_logprobs"
    if top_p == 1.0:
        return "processed_logprobs"
    return None


@dataclass
class VLLMRolloutConfig(RolloutConfig):
    """Generation with vLLM in the training process, one engine per GPU (vLLM's external launcher: each rank's engine on its
    own device); the policy's weights are copied into vLLM after every update (rollout/vllm.py). Needs the `vllm` extra
    (pinned, see docs/scaling.md) and CUDA."""

    name: str = "vllm"
    gpu_memory_utilization: float = 0.3  # share of the GPU vLLM takes for weights + KV cache; the rest trains
    enforce_eager: bool = False  # True: no CUDA graphs (starts faster, generates slower)
    max_model_len: Optional[int] = None  # None: the pool's longest prompt + max_new_tokens
    # vLLM's sleep mode between generation and training: 0 off; 1 weights to host memory + KV cache freed; 2 both freed
    # (the next weight sync reloads them: the cheaper one when, as here, every step syncs). It wakes as TRL does: torch's
    # cache emptied, the weights woken and synced, then the KV cache
    sleep_level: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.sleep_level in (0, 1, 2), f"rollout.sleep_level={self.sleep_level} is not allowed; choose one of: 0, 1, 2")
        check(0 < self.gpu_memory_utilization < 1, f"rollout.gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1)")
        if self.max_model_len is not None:
            positive("rollout.max_model_len", self.max_model_len)

    def check_run(self, run) -> None:
        super().check_run(run)
        correction = next((f"algorithm.{key}={value}" for key in ("rollout_is", "rollout_mask")
                           if (value := getattr(run.algorithm, key)) != "none"), None)
        check(correction is None or vllm_logprobs_mode(temperature=self.temperature, top_p=self.top_p) is not None,
              f"{correction} with rollout.temperature={self.temperature} and rollout.top_p={self.top_p}: vLLM reports log-probs "
              "before the temperature or after top-p, neither comparable with the trainer's; set temperature=1 or top_p=1")
        check(not self.one_step_off_policy,
              f"rollout.one_step_off_policy=true is built for rollout=hf only (a background thread on a copy of the weights); "
              f"rollout={self.name} would need its engine to generate during the update: use rollout=hf or one_step_off_policy=false")
