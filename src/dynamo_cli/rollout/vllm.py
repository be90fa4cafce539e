"""rollout=vllm: generation with vLLM (an optional extra, GPU only), the policy's weights copied in every step.

vLLM runs in the training process on the same GPU (`rollout.gpu_memory_utilization` of its memory). After
every policy update `sync` loads the policy's current weights into vLLM's model (a LoRA adapter merged
first) and drops vLLM's prefix cache, whose KV entries the old weights computed. Each rollout is one vLLM
request with its own seed, derived from (run seed, step, rollout index) like the hf backend's counter
streams, so a rollout's sampling does not depend on how vLLM batches the requests.

`rollout.sleep_level` frees vLLM's GPU memory while the policy trains (vLLM's sleep mode): 1 offloads its weights
to host memory and drops the KV cache once a step's generation is over (`release`, after every round), 2 drops both
(the next `sync` loads the new weights anyway, so nothing is copied back). The engine wakes in `sync`, before the
weights load, and a generation that finds it asleep wakes it (level 1 only: at level 2 its weights are gone until a
sync, so that is an error).
"""
from __future__ import annotations

import os
import tempfile

import torch

from dynamo_cli.config.rollout import VLLMRolloutConfig
from dynamo_cli.rollout.engines import ROLLOUT_ENGINES
from dynamo_cli.rollout.hf import Rollouts, rollouts_from_token_ids, stream_seed


class VLLMUnavailable(RuntimeError):
    """vLLM is not installed or there is no CUDA device."""


def require_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as error:
        raise VLLMUnavailable("rollout=vllm needs the vllm package: pip install 'dynamo-cli[vllm]' (or choose rollout=hf)") from error
    if not torch.cuda.is_available():
        raise VLLMUnavailable("rollout=vllm needs a CUDA GPU; on this machine choose rollout=hf")


def policy_weights(policy) -> dict[str, torch.Tensor]:
    """The policy's full weights under Hugging Face names (a LoRA adapter merged into its base)."""
    from dynamo_cli.models.load import base_state_dict, is_peft_model

    if not is_peft_model(policy):
        return {name: tensor.detach() for name, tensor in policy.state_dict().items()}
    policy.merge_adapter()
    try:
        return {name: tensor.detach().clone() for name, tensor in base_state_dict(policy).items()}
    finally:
        policy.unmerge_adapter()


@ROLLOUT_ENGINES.register("vllm", schema=VLLMRolloutConfig)
class VLLMRollouts:
    def __init__(self, policy, tokenizer, *, gpu_memory_utilization: float, enforce_eager: bool, max_model_len: int | None,
                 sleep_level: int, longest_sequence: int, seed: int, logprobs: bool = False):
        """logprobs: report each sampled token's log-prob (algorithm.rollout_is), after temperature and top-p like
        the sampler's, vLLM's `processed_logprobs` mode (vLLM >= 0.10.2)."""
        require_vllm()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: weights load in place
        from vllm import LLM

        self.tokenizer, self.logprobs = tokenizer, logprobs
        self.sleep_level, self.asleep = sleep_level, False
        self._init_dir = tempfile.TemporaryDirectory(prefix="dynamo-vllm-")  # the starting weights, in a form vLLM reads
        base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        base.save_pretrained(self._init_dir.name, state_dict=policy_weights(policy), safe_serialization=True)
        tokenizer.save_pretrained(self._init_dir.name)
        self.llm = LLM(model=self._init_dir.name, tokenizer=self._init_dir.name, dtype=str(next(policy.parameters()).dtype).split(".")[-1],
                       gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
                       max_model_len=max_model_len or longest_sequence, seed=seed, enable_prefix_caching=True,
                       **({"logprobs_mode": "processed_logprobs"} if logprobs else {}),
                       **({"enable_sleep_mode": True} if sleep_level else {}))

    def release(self) -> None:
        """A step's generation is over: give the GPU memory back to training (rollout.sleep_level 1 or 2; 0: stay awake)."""
        if self.sleep_level and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def wake(self, *, weights_follow: bool) -> None:
        """Before a sync (`weights_follow`) or a generation: reallocate weights and KV cache. At level 2 the weights
        were dropped, so only a sync may wake the engine."""
        if not self.asleep:
            return
        if self.sleep_level == 2 and not weights_follow:
            raise RuntimeError("vLLM slept at rollout.sleep_level=2 (weights dropped) and was asked to generate before a sync")
        self.llm.wake_up()
        self.asleep = False

    def sync(self, policy) -> None:
        self.wake(weights_follow=True)
        weights = list(policy_weights(policy).items())
        if hasattr(self.llm, "apply_model"):
            self.llm.apply_model(lambda model: model.load_weights(weights))
        else:  # older vLLM
            self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()  # cached KV came from the old weights

    def generate(self, prompts: list[str], *, counts: torch.Tensor, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int | None, streams: torch.Tensor, max_batch_size: int) -> Rollouts:
        """`max_batch_size` is not used: vLLM schedules its own batches within its memory share."""
        from vllm import SamplingParams

        self.wake(weights_follow=False)
        encoded = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        prompt_index = torch.repeat_interleave(torch.arange(len(prompts)), counts.cpu())
        requests = [{"prompt_token_ids": encoded[i]} for i in prompt_index.tolist()]
        params = [SamplingParams(n=1, max_tokens=max_new_tokens, temperature=0.0 if seed is None else temperature, top_p=top_p,
                                 seed=None if seed is None else stream_seed(seed, int(stream)) % 2**31, skip_special_tokens=True,
                                 logprobs=0 if self.logprobs else None)  # 0: the sampled token's log-prob only
                  for stream in streams.tolist()]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False) if requests else []
        completions = [list(out.outputs[0].token_ids) for out in outputs]
        finished = [out.outputs[0].finish_reason == "stop" for out in outputs]
        logprobs = ([[step[token].logprob for token, step in zip(o.outputs[0].token_ids, o.outputs[0].logprobs, strict=True)]
                     for o in outputs] if self.logprobs else None)
        return rollouts_from_token_ids(self.tokenizer, encoded, prompt_index, completions, finished, logprobs=logprobs)
