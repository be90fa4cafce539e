"""rollout=vllm: generation with vLLM (an optional extra, GPU only), one engine per GPU, the policy's weights copied in
every step.

One engine per GPU. Every process builds its own in-process vLLM engine with vLLM's external-launcher executor
(`distributed_executor_backend="external_launcher"`, tensor parallel 1), the pattern TRL and verl use: vLLM reads the
torchrun variables `accelerate launch` set (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT; `launch_env` fills them in
for a single process), puts its worker on cuda:LOCAL_RANK, this process's own GPU, and treats the other processes as
independent data-parallel engines. A plain in-process `LLM` would take local device 0 on every rank and call
`torch.cuda.set_device(0)` under the trainer.

Weights. The engine starts from the model's config with dummy weights (`load_format="dummy"`: nothing of the model is
written to disk, on any rank) and `load` streams the policy's weights into it, tensor by tensor, through vLLM's
`reload_weights`; after every update `sync` does it again and drops the prefix cache (the old weights computed its
KV entries). Under LoRA each adapted projection is merged out of place (W + scale·B·A into a new tensor): the base
weights are never touched, so they and the KL reference (the adapter-disabled base) cannot drift.

Sampling. One engine seed per process (`seed` folded with the rank): per-request seeds would force vLLM's slow
per-request sampling path. So, unlike rollout=hf's counter-based streams, a vLLM rollout depends on how vLLM batched
it: a run replays only as far as vLLM's own scheduling is deterministic. Each sampled token's log-prob comes back
(`logprobs=0`) in the logprobs mode that matches the trainer's log-softmax(logits / temperature) without top-p
(config/rollout.py `vllm_logprobs_mode`). The engine stops on the end tokens `rollout/hf.py:end_token_ids` names (the
tokenizer's EOS and every eos_token_id of generation_config), passed as stop_token_ids; vLLM keeps the token it
stopped on, so nothing is appended. `generation_config="vllm"`: no sampling default of the model's file leaks in.

`rollout.sleep_level` frees vLLM's GPU memory while the policy trains (vLLM's sleep mode): 1 offloads its weights to
host memory and drops the KV cache once a step's generation is over (`release`), 2 drops both (the next `sync` loads
the new weights anyway). `sync` wakes it in TRL's order: torch's cache emptied (what the update freed goes back to the
device), the weights woken, the new weights loaded, then the KV cache. A generation that finds it asleep wakes it
whole (level 1 only: at level 2 its weights are gone until a sync, so that is an error).

Supported vLLM: `SUPPORTED` (pyproject's `vllm` extra); every vLLM API this module calls was checked against the
source of each release in that range by scripts/check_vllm_api.py (docs/scaling.md "rollout=vllm").
"""
from __future__ import annotations

import os
import socket
import tempfile
from typing import Iterator, Mapping

import torch

from dynamo_cli.config.rollout import VLLMRolloutConfig, vllm_logprobs_mode
from dynamo_cli.errors import DynamoError
from dynamo_cli.rollout.engines import ROLLOUT_ENGINES
from dynamo_cli.rollout.hf import Rollouts, end_token_ids, rollouts_from_token_ids, stream_seed

SUPPORTED = ((0, 20), (0, 35))  # vllm>=0.20,<0.35: the range pyproject's extra pins and check_vllm_api.py checked


class VLLMUnavailable(RuntimeError):
    """vLLM is not installed, not a supported version, or there is no CUDA device."""


def supported_range() -> str:
    (lo_major, lo_minor), (hi_major, hi_minor) = SUPPORTED
    return f"vllm>={lo_major}.{lo_minor},<{hi_major}.{hi_minor}"


def check_version(version: str) -> None:
    """Raise VLLMUnavailable unless `version` (vllm.__version__) is in SUPPORTED."""
    try:
        release = tuple(int(part) for part in version.split("+")[0].split(".")[:2])
    except ValueError:
        raise VLLMUnavailable(f"vllm {version}: cannot read its version; dynamo supports {supported_range()}") from None
    if not SUPPORTED[0] <= release < SUPPORTED[1]:
        raise VLLMUnavailable(f"vllm {version} is installed; dynamo supports {supported_range()} (each release checked against "
                              "the APIs it calls): pip install 'dynamo-cli[vllm]' in the order docs/scaling.md gives, or rollout=hf")


def require_vllm() -> None:
    try:
        import vllm
    except ImportError as error:
        raise VLLMUnavailable(f"rollout=vllm needs the vllm package ({supported_range()}): pip install 'dynamo-cli[vllm]' "
                              "(docs/scaling.md gives the order that keeps your torch), or choose rollout=hf") from error
    check_version(getattr(vllm, "__version__", "0"))
    if not torch.cuda.is_available():
        raise VLLMUnavailable("rollout=vllm needs a CUDA GPU; on this machine choose rollout=hf")


def launch_env(*, rank: int, local_rank: int, world_size: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The torchrun variables vLLM's external launcher reads that `environ` lacks: `accelerate launch` sets them all, a
    single process gets rank 0 of 1 on its own device (LOCAL_RANK = its CUDA index) and a free local port."""
    wanted = {"RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1"}
    missing = {key: value for key, value in wanted.items() if key not in environ}
    if "MASTER_PORT" not in environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            missing["MASTER_PORT"] = str(s.getsockname()[1])
    return missing


def engine_kwargs(*, model_dir: str, dtype: str, gpu_memory_utilization: float, enforce_eager: bool, max_model_len: int,
                  seed: int, sleep_level: int, logprobs_mode: str | None) -> dict:
    """vLLM's LLM(...) arguments: this process's own engine (external launcher, tensor parallel 1) on dummy weights that
    `load` replaces, the model file's sampling defaults ignored, one engine seed."""
    return dict(model=model_dir, tokenizer=model_dir, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=enforce_eager, max_model_len=max_model_len, seed=seed, enable_prefix_caching=True,
                distributed_executor_backend="external_launcher", tensor_parallel_size=1, load_format="dummy",
                generation_config="vllm", **({"logprobs_mode": logprobs_mode} if logprobs_mode else {}),
                **({"enable_sleep_mode": True} if sleep_level else {}))


def sampling_kwargs(*, max_new_tokens: int, temperature: float, top_p: float, greedy: bool, eos_ids: tuple[int, ...],
                    logprobs: bool) -> dict:
    """One request's SamplingParams: no per-request seed (the engine's), our end tokens, the sampled token's log-prob."""
    return dict(n=1, max_tokens=max_new_tokens, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
                stop_token_ids=list(eos_ids), skip_special_tokens=True, logprobs=0 if logprobs else None)


def merged_weights(policy, *, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's full weights under Hugging Face names, one tensor at a time (cast to `dtype` on the way). Under LoRA each
    adapted layer's weight is merged out of place, W + scale·B·A as a new tensor: the base weights are never written."""
    from dynamo_cli.models.load import base_state_dict, is_peft_model

    cast = (lambda t: t.detach().to(dtype)) if dtype is not None else (lambda t: t.detach())
    if not is_peft_model(policy):
        for name, tensor in policy.state_dict().items():
            yield name, cast(tensor)
        return
    from peft.tuners.lora import LoraLayer

    adapter = policy.active_adapter
    merged = {}
    for name, module in policy.get_base_model().named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            merged[f"{name}.weight"] = module
    with torch.no_grad():
        for name, tensor in base_state_dict(policy).items():
            layer = merged.get(name)
            if layer is None:
                yield name, cast(tensor)
            else:
                # in the wider of the two dtypes (peft keeps adapters in float32), rounded once to the base's, as peft's merge
                yield name, cast((tensor + layer.get_delta_weight(adapter)).to(tensor.dtype))


def write_model_config(policy, tokenizer, directory: str) -> None:
    """What vLLM needs to build the model without its weights: config.json, generation_config.json, the tokenizer."""
    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    base.config.save_pretrained(directory)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


@ROLLOUT_ENGINES.register("vllm", schema=VLLMRolloutConfig)
class VLLMRollouts:
    def __init__(self, policy, tokenizer, *, gpu_memory_utilization: float, enforce_eager: bool, max_model_len: int | None,
                 sleep_level: int, temperature: float, top_p: float, longest_sequence: int, seed: int, model_dtype: str,
                 rank: int = 0, local_rank: int = 0, world_size: int = 1):
        """longest_sequence: the pool's longest prompt + max_new_tokens, the default max_model_len, which a set one must
        reach (else a long prompt would fail mid-run). Log-probs are reported whenever a logprobs mode compares with the
        trainer's (always, but at temperature != 1 with top_p < 1)."""
        if max_model_len is not None and max_model_len < longest_sequence:
            raise DynamoError(f"rollout.max_model_len={max_model_len} is shorter than the prompt pool's longest prompt plus "
                              f"max_new_tokens ({longest_sequence}): raise it or leave it null")
        require_vllm()
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the external launcher needs the engine in this process
        os.environ.update(launch_env(rank=rank, local_rank=local_rank, world_size=world_size, environ=os.environ))
        from vllm import LLM

        self.tokenizer, self.sleep_level, self.asleep = tokenizer, sleep_level, False
        self.logprobs_mode = vllm_logprobs_mode(temperature=temperature, top_p=top_p)
        self.eos_ids = end_token_ids(tokenizer, policy)
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[model_dtype]
        self._config_dir = tempfile.TemporaryDirectory(prefix="dynamo-vllm-config-")  # config and tokenizer only
        write_model_config(policy, tokenizer, self._config_dir.name)
        self.llm = LLM(**engine_kwargs(
            model_dir=self._config_dir.name, dtype=model_dtype, gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager, max_model_len=max_model_len or longest_sequence,
            seed=stream_seed(seed, rank) % 2**31, sleep_level=sleep_level, logprobs_mode=self.logprobs_mode))
        self.load(policy)  # the policy's weights replace the dummy ones

    def load(self, policy) -> None:
        """The policy's current weights into the engine, streamed; its prefix cache dropped."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": merged_weights(policy, dtype=self.dtype),
                                                          "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()  # cached KV came from the old weights

    def release(self) -> None:
        """A step's generation is over: give the GPU memory back to training (rollout.sleep_level 1 or 2; 0: stay awake)."""
        if self.sleep_level and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def sync(self, policy) -> None:
        """After an update: TRL's order. Torch's cache emptied, the weights woken, loaded, then the KV cache woken."""
        if self.asleep:
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])
        self.load(policy)
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False

    def wake(self) -> None:
        """Before a generation that finds the engine asleep (level 1: its weights are on the host)."""
        if not self.asleep:
            return
        if self.sleep_level == 2:
            raise RuntimeError("vLLM slept at rollout.sleep_level=2 (weights dropped) and was asked to generate before a sync")
        torch.cuda.empty_cache()
        self.llm.wake_up()
        self.asleep = False

    def generate(self, prompts: list[str], *, counts: torch.Tensor, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int | None, max_batch_size: int, streams: torch.Tensor | None = None) -> Rollouts:
        """`max_batch_size` and `streams` are not used: vLLM schedules its own batches, and samples from its engine seed.
        `seed=None` or temperature 0: greedy (eval)."""
        from vllm import SamplingParams

        self.wake()
        greedy = seed is None or temperature == 0
        # the engine's logprobs mode was chosen for the rollout settings: a generation at others (eval) reports none
        logprobs = not greedy and self.logprobs_mode is not None and vllm_logprobs_mode(temperature=temperature, top_p=top_p) == self.logprobs_mode
        encoded = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        prompt_index = torch.repeat_interleave(torch.arange(len(prompts)), counts.cpu())
        requests = [{"prompt_token_ids": encoded[i]} for i in prompt_index.tolist()]
        params = SamplingParams(**sampling_kwargs(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, greedy=greedy,
                                                  eos_ids=self.eos_ids, logprobs=logprobs))
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False) if requests else []
        completions = [list(out.outputs[0].token_ids) for out in outputs]
        finished = [out.outputs[0].finish_reason == "stop" for out in outputs]
        reported = ([[step[token].logprob for token, step in zip(o.outputs[0].token_ids, o.outputs[0].logprobs, strict=True)]
                     for o in outputs] if logprobs else None)
        return rollouts_from_token_ids(self.tokenizer, encoded, prompt_index, completions, finished, logprobs=reported)
