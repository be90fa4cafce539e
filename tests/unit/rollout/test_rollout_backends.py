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
    without_eos = [c[:-1] if done else c for c, done in zip(completions, made.finished.tolist(), strict=True)]  # vLLM may omit EOS
    for lists in (completions, without_eos):
        rebuilt = rollouts_from_token_ids(tokenizer, encoded, made.prompt_index, lists, made.finished.tolist())
        for name in ("prompt_index", "input_ids", "attention_mask", "completion_mask", "finished"):
            assert torch.equal(getattr(rebuilt, name), getattr(made, name)), name
        assert rebuilt.prompt_width == made.prompt_width and rebuilt.texts == made.texts


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_rollout_vllm_without_vllm_is_one_clear_line(sft_checkpoint, tmp_path):
    result = dynamo("train", "rollout=vllm", f"model.path={sft_checkpoint}", f"hydra.run.dir={tmp_path}", "logger=none",
                    "trainer.steps=1", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == ("dynamo train: error: rollout=vllm needs the vllm package: pip install 'dynamo-cli[vllm]' "
                                     "(or choose rollout=hf)")
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.skipif(not HAS_VLLM_GPU, reason="needs vllm and a CUDA GPU")
def test_vllm_generates_what_the_policy_generates_and_follows_weight_syncs():
    from dynamo_cli.rollout.vllm import VLLMRollouts

    model, tokenizer = _tiny(head_dim_64=True)
    model = model.cuda()
    engine = VLLMRollouts(VLLMRolloutConfig(enforce_eager=True, gpu_memory_utilization=0.2), model, tokenizer, max_model_len=64, seed=0)
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

    def wake_up(self):
        self.calls.append("wake")

    def apply_model(self, fn):
        self.calls.append("load weights")

    def reset_prefix_cache(self):
        self.calls.append("reset cache")


@pytest.mark.parametrize("level", [0, 1, 2])
def test_vllm_sleeps_after_generation_and_wakes_before_the_weights_load(level):
    """rollout.sleep_level: the engine sleeps once a step's generation is over (`release`, whatever the rounds) and
    wakes in the next sync, before the weights load; at level 2 (weights dropped) it refuses to generate before a
    sync, at level 1 it wakes itself."""
    from dynamo_cli.rollout.vllm import VLLMRollouts

    engine = object.__new__(VLLMRollouts)  # the sleep logic without vLLM's constructor
    engine.llm, engine.sleep_level, engine.asleep = _FakeLLM(), level, False
    model, _ = _tiny()
    engine.release()  # the step's rounds are over
    engine.release()  # idempotent
    engine.sync(model)
    assert engine.llm.calls == ([] if level == 0 else [f"sleep {level}", "wake"]) + ["load weights", "reset cache"]
    engine.release()
    if level == 2:
        with pytest.raises(RuntimeError, match="sleep_level=2"):
            engine.wake(weights_follow=False)
    else:
        engine.wake(weights_follow=False)
        assert not engine.asleep


def test_vllm_sleep_level_is_checked_at_the_edge():
    with pytest.raises(Exception, match=r"rollout.sleep_level=3 is not allowed; choose one of: 0, 1, 2"):
        VLLMRolloutConfig(sleep_level=3)
