"""Rollout backends: the shared Rollouts layout, rollout=vllm's clear refusal without vLLM/CUDA, and (on a GPU
machine with vLLM installed) vLLM generating what the policy generates, before and after a weight sync."""
import importlib.util

import pytest
import torch
from conftest import dynamo

from dynamo_cli.config.model import TinyModelConfig
from dynamo_cli.config.rollout import VLLMRolloutConfig
from dynamo_cli.models.load import build_char_tokenizer, build_tiny_model
from dynamo_cli.rollout.hf import generate, rollouts_from_token_ids, stream_seed

HAS_VLLM_GPU = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
PROMPTS = ["1+2=", "34+5=", "7*8=", "12+34="]


def _tiny(head_dim_64: bool = False):
    tokenizer = build_char_tokenizer()
    cfg = TinyModelConfig(hidden_size=256, num_heads=4, intermediate_size=512) if head_dim_64 else TinyModelConfig(hidden_size=64, num_layers=2, intermediate_size=128)
    return build_tiny_model(cfg, tokenizer), tokenizer


def test_token_lists_make_the_same_rollouts_as_generate(sft_checkpoint):
    from dynamo_cli.models.load import load_checkpoint

    model, tokenizer = load_checkpoint(str(sft_checkpoint), dtype=torch.float32)  # stops after single-digit sums...
    counts = torch.tensor([2, 1, 3, 2])
    made = generate(model, tokenizer, PROMPTS, counts=counts, max_new_tokens=2, temperature=1.0, top_p=1.0,
                    seed=stream_seed(5), max_batch_size=3)  # ...and is cut short on two-digit results
    assert made.finished.any() and (~made.finished).any()  # both kinds of rows are covered
    encoded = tokenizer(PROMPTS, add_special_tokens=False)["input_ids"]
    completions = [row[mask].tolist() for row, mask in zip(made.completion_ids, made.completion_mask, strict=True)]
    logprobs = [row[mask].tolist() for row, mask in zip(made.logprobs, made.completion_mask, strict=True)]
    rebuilt = rollouts_from_token_ids(tokenizer, encoded, made.prompt_index, completions, made.finished.tolist(), logprobs=logprobs)
    for name in ("prompt_index", "input_ids", "attention_mask", "completion_mask", "finished", "logprobs"):
        assert torch.equal(getattr(rebuilt, name), getattr(made, name)), name
    assert rebuilt.prompt_width == made.prompt_width and rebuilt.texts == made.texts


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_rollout_vllm_without_vllm_is_one_clear_line(sft_checkpoint, tmp_path):
    result = dynamo("train", "rollout=vllm", f"model.path={sft_checkpoint}", f"hydra.run.dir={tmp_path}", "logger=none",
                    "trainer.steps=1", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == ("dynamo train: error: rollout=vllm needs the vllm package (vllm>=0.20,<0.35): pip install "
                                     "'dynamo-cli[vllm]' (docs/scaling.md gives the order that keeps your torch), or choose rollout=hf")
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.skipif(not HAS_VLLM_GPU, reason="needs vllm and a CUDA GPU")
def test_vllm_generates_what_the_policy_generates_and_follows_weight_syncs():
    from dynamo_cli.rollout.vllm import VLLMRollouts

    model, tokenizer = _tiny(head_dim_64=True)
    engine = VLLMRollouts(model, tokenizer, gpu_memory_utilization=0.2, enforce_eager=True, max_model_len=64, sleep_level=0,
                          temperature=1.0, top_p=1.0, longest_sequence=64, seed=0, model_dtype="float32")
    model = model.cuda()  # as in train: the engine first, from the policy on the host
    counts = torch.ones(len(PROMPTS), dtype=torch.long)

    def both():
        kwargs = dict(counts=counts, max_new_tokens=8, temperature=1.0, top_p=1.0, seed=None, streams=torch.arange(4), max_batch_size=8)
        return engine.generate(PROMPTS, **kwargs).texts, generate(model, tokenizer, PROMPTS, **kwargs).texts

    served, own = both()
    assert served == own  # greedy, same weights
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    assert both()[0] == served  # vLLM still holds the old weights...
    engine.sync(model)
    served, own = both()
    assert served == own  # ...until the sync


class _FakeLLM:
    """Records what VLLMRollouts asks of vLLM's LLM: the sleep/wake/load order without vLLM or a GPU."""

    def __init__(self):
        self.calls = []

    def sleep(self, level):
        self.calls.append(f"sleep {level}")

    def wake_up(self, tags=None):
        self.calls.append(f"wake {'+'.join(tags) if tags else 'all'}")

    def collective_rpc(self, method, kwargs=None):
        self.calls.append(method)
        list(kwargs["weights_iterator"])  # streamed: consumed here, as vLLM's loader does

    def reset_prefix_cache(self):
        self.calls.append("reset cache")


@pytest.mark.parametrize("level", [0, 1, 2])
def test_vllm_sleeps_after_generation_and_wakes_in_trls_order(level, monkeypatch):
    """rollout.sleep_level: the engine sleeps once a step's generation is over (`release`, whatever the rounds); the next
    sync empties torch's cache, wakes the weights, loads the new ones, then wakes the KV cache (TRL's order); at level 2
    (weights dropped) it refuses to generate before a sync, at level 1 it wakes itself whole."""
    from dynamo_cli.rollout import vllm
    from dynamo_cli.rollout.vllm import VLLMRollouts

    engine = object.__new__(VLLMRollouts)  # the sleep logic without vLLM's constructor
    engine.llm, engine.sleep_level, engine.asleep, engine.dtype = _FakeLLM(), level, False, torch.bfloat16
    monkeypatch.setattr(vllm.torch.cuda, "empty_cache", lambda: engine.llm.calls.append("empty torch cache"))
    model, _ = _tiny()
    engine.release()  # the step's rounds are over
    engine.release()  # idempotent
    engine.sync(model)
    asleep = [f"sleep {level}", "empty torch cache", "wake weights"]
    assert engine.llm.calls == (([] if level == 0 else asleep) + ["reload_weights", "reset cache"]
                                + ([] if level == 0 else ["wake kv_cache"]))
    engine.release()
    if level == 2:
        with pytest.raises(RuntimeError, match="sleep_level=2"):
            engine.wake()
    else:
        engine.wake()
        assert not engine.asleep and engine.llm.calls[-1] == ("wake all" if level else "reset cache")


def test_vllm_engine_arguments_by_hand():
    """What rollout/vllm.py asks of vLLM (scripts/check_vllm_api.py checks these names against each supported release)."""
    from dynamo_cli.rollout.vllm import VLLMUnavailable, check_version, engine_kwargs, launch_env, sampling_kwargs

    kwargs = engine_kwargs(model_dir="/m", dtype="bfloat16", gpu_memory_utilization=0.3, enforce_eager=False, max_model_len=96,
                           seed=7, sleep_level=0, logprobs_mode="raw_logprobs")
    # this process's own engine on this process's GPU, dummy weights then ours, no sampling defaults from the model's file
    assert kwargs["distributed_executor_backend"] == "external_launcher" and kwargs["tensor_parallel_size"] == 1
    assert (kwargs["load_format"], kwargs["generation_config"], kwargs["logprobs_mode"]) == ("dummy", "vllm", "raw_logprobs")
    assert "enable_sleep_mode" not in kwargs and engine_kwargs(**{**dict(model_dir="/m", dtype="bfloat16", gpu_memory_utilization=0.3,
                                                                        enforce_eager=False, max_model_len=96, seed=7,
                                                                        logprobs_mode=None), "sleep_level": 2})["enable_sleep_mode"]
    params = sampling_kwargs(max_new_tokens=5, temperature=0.7, top_p=0.9, greedy=False, eos_ids=(2, 9), logprobs=True)
    assert params == dict(n=1, max_tokens=5, temperature=0.7, top_p=0.9, stop_token_ids=[2, 9], skip_special_tokens=True, logprobs=0)
    assert "seed" not in params  # one engine seed: a per-request seed forces vLLM's slow sampling path
    greedy = sampling_kwargs(max_new_tokens=5, temperature=0.7, top_p=0.9, greedy=True, eos_ids=(2,), logprobs=False)
    assert (greedy["temperature"], greedy["top_p"], greedy["logprobs"]) == (0.0, 1.0, None)
    # a single process: rank 0 of 1 on its device; under accelerate launch nothing is overridden
    single = launch_env(rank=0, local_rank=3, world_size=1, environ={})
    assert {k: single[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "0", "LOCAL_RANK": "3", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"} and int(single["MASTER_PORT"]) > 0
    launched = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert launch_env(rank=1, local_rank=1, world_size=4, environ=launched) == {}
    check_version("0.20.0")
    check_version("0.34.9+cu130")
    for outside in ("0.19.1", "0.35.0", "0.8.5"):
        with pytest.raises(VLLMUnavailable, match=rf"vllm {outside} is installed; dynamo supports vllm>=0.20,<0.35"):
            check_version(outside)


def test_lora_weights_reach_the_engine_merged_without_touching_the_base():
    """The weights vLLM receives under LoRA equal peft's merge, computed out of place: the base (and with it the KL
    reference, the adapter-disabled base) stays bit-identical, in bf16 too, where merge-then-unmerge would drift."""
    from dynamo_cli.config.model import LoraConfig
    from dynamo_cli.models.load import add_lora
    from dynamo_cli.rollout.vllm import merged_weights

    model, _ = _tiny()
    policy = add_lora(model.to(torch.bfloat16), LoraConfig(enabled=True, r=4))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: B != 0
    base = {k: v.clone() for k, v in policy.get_base_model().state_dict().items() if "lora_" not in k}
    streamed = dict(merged_weights(policy))
    after = {k: v for k, v in policy.get_base_model().state_dict().items() if "lora_" not in k}
    assert all(torch.equal(base[k], after[k]) for k in base)  # not one bit of the base moved
    import copy

    reference = copy.deepcopy(policy).merge_and_unload().state_dict()
    assert streamed.keys() == reference.keys()
    assert all(torch.equal(streamed[k], reference[k]) for k in reference)
    assert any(not torch.equal(streamed[k], base[k.replace(".weight", ".base_layer.weight")])
               for k in streamed if k.replace(".weight", ".base_layer.weight") in base)  # the adapter is in


def test_vllm_sleep_level_is_checked_at_the_edge():
    with pytest.raises(Exception, match=r"rollout.sleep_level=3 is not allowed; choose one of: 0, 1, 2"):
        VLLMRolloutConfig(sleep_level=3)


def test_the_hf_engine_reports_the_log_probs_the_trainer_computes():
    """Each sampled token's log μ (the engine's, at the temperature, before top-p) equals the trainer's log π_old of the same
    token on the same float32 weights, up to the KV cache's float reordering; greedy decoding reports none."""
    from dynamo_cli.rollout.policy_stats import batched_token_stats

    model, tokenizer = _tiny()
    made = generate(model, tokenizer, PROMPTS, counts=torch.full((4,), 2), max_new_tokens=6, temperature=0.8, top_p=0.7,
                    seed=stream_seed(1), max_batch_size=3)
    trainer, _ = batched_token_stats(model, input_ids=made.input_ids, attention_mask=made.attention_mask, prompt_width=made.prompt_width,
                                     temperature=0.8, micro_batch_size=8, with_entropy=False)
    mask = made.completion_mask
    assert made.logprobs.shape == mask.shape and torch.allclose(made.logprobs[mask], trainer[mask], atol=1e-5)
    assert (made.logprobs[~mask] == 0).all()
    greedy = generate(model, tokenizer, PROMPTS, counts=torch.ones(4, dtype=torch.long), max_new_tokens=3, temperature=1.0,
                      top_p=1.0, seed=None, max_batch_size=4)
    assert greedy.logprobs is None


def test_generation_stops_on_every_end_token_of_the_generation_config():
    """Qwen2.5-Instruct lists two end tokens in generation_config; the hf loop stops on each, as vLLM does, and the token
    it stopped on is the completion's last (none is ever appended)."""
    from dynamo_cli.rollout.hf import end_token_ids

    model, tokenizer = _tiny()
    extra = [tokenizer.convert_tokens_to_ids(c) for c in "0123456789"]  # frequent tokens: many rows end on one
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, *extra]
    assert end_token_ids(tokenizer, model) == tuple(sorted({tokenizer.eos_token_id, *extra}))
    made = generate(model, tokenizer, PROMPTS * 4, counts=torch.ones(16, dtype=torch.long), max_new_tokens=24, temperature=1.0,
                    top_p=1.0, seed=stream_seed(3), max_batch_size=16)
    ends = set(end_token_ids(tokenizer, model))
    lengths = made.completion_mask.sum(-1)
    assert made.finished.any()
    for row in range(16):
        tokens = made.completion_ids[row, :lengths[row]].tolist()
        assert bool(made.finished[row]) == (tokens[-1] in ends)  # finished exactly when the last token is an end token
        assert not ends & set(tokens[:-1])  # and no end token before it
    model.generation_config.eos_token_id = None
    assert end_token_ids(tokenizer, model) == (tokenizer.eos_token_id,)


def test_under_mixed_precision_the_hf_engine_generates_from_a_copy_in_model_dtype():
    """rollout=hf with bf16 over float32 masters: a frozen bf16 copy generates (as vLLM would hold it); the policy keeps
    its float32 weights; `sync` copies each update in."""
    from dynamo_cli.models import precision
    from dynamo_cli.rollout.hf import PolicyRollouts

    model, tokenizer = _tiny()
    precision.mark(model, torch.bfloat16)
    engine = PolicyRollouts(model, tokenizer, generation_dtype=torch.bfloat16)
    assert {p.dtype for p in engine.generator.parameters()} == {torch.bfloat16} and not any(p.requires_grad for p in engine.generator.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.float32} and precision.marked_dtype(engine.generator) is None
    made = engine.generate(PROMPTS, counts=torch.ones(4, dtype=torch.long), max_new_tokens=4, temperature=1.0, top_p=1.0,
                           seed=stream_seed(2), max_batch_size=4)
    assert made.logprobs is not None and made.logprobs.dtype == torch.float32
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    assert not all(torch.equal(g, p.to(torch.bfloat16)) for g, p in zip(engine.generator.parameters(), model.parameters(), strict=True))
    engine.sync(model)
    assert all(torch.equal(g, p.to(torch.bfloat16)) for g, p in zip(engine.generator.parameters(), model.parameters(), strict=True))
    same = PolicyRollouts(model, tokenizer)  # float32: the policy itself generates, sync has nothing to do
    assert same.generator is model


def test_with_lora_the_hf_engine_generates_from_a_merged_copy_that_sync_refreshes():
    """rollout.merge_lora: a plain copy with W + (alpha / r)·B·A in each adapted layer generates what the policy would
    (the same logits to float rounding, the same greedy tokens); sync brings an update's adapter in; the policy's base
    and adapter stay as they were."""
    from dynamo_cli.config.model import LoraConfig
    from dynamo_cli.models.load import add_lora
    from dynamo_cli.rollout.hf import PolicyRollouts

    base, tokenizer = _tiny()
    policy = add_lora(base, LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:  # peft starts B at 0, which would make any copy of the base look merged
                p.normal_(0, 0.1)
    base_before = {k: v.clone() for k, v in policy.get_base_model().state_dict().items()}
    engine = PolicyRollouts(policy, tokenizer, merge_lora=True)
    assert engine.merged and not any("lora_" in n for n, _ in engine.generator.named_parameters())
    assert not any(p.requires_grad for p in engine.generator.parameters())
    ids = tokenizer(PROMPTS, return_tensors="pt", padding=True)

    def logits(model):
        with torch.no_grad():
            return model(**ids).logits

    policy.eval()
    assert torch.allclose(logits(engine.generator), logits(policy), atol=1e-5)
    greedy = dict(counts=torch.ones(4, dtype=torch.long), max_new_tokens=6, temperature=0.0, top_p=1.0, seed=None, max_batch_size=4)
    assert torch.equal(engine.generate(PROMPTS, **greedy).input_ids, generate(policy, tokenizer, PROMPTS, **greedy).input_ids)
    with torch.no_grad():  # an update moves the adapter
        for name, p in policy.named_parameters():
            if "lora_A" in name:
                p.add_(0.05)
    assert not torch.allclose(logits(engine.generator), logits(policy), atol=1e-4)
    engine.sync(policy)
    assert torch.allclose(logits(engine.generator), logits(policy), atol=1e-5)
    assert all(torch.equal(v, base_before[k]) for k, v in policy.get_base_model().state_dict().items() if "lora_" not in k)
    assert PolicyRollouts(policy, tokenizer, merge_lora=True, copy_allowed=False).generator is policy  # FSDP2, off-policy
    assert PolicyRollouts(policy, tokenizer, merge_lora=False).generator is policy
