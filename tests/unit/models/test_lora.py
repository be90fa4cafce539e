"""LoRA end to end on the tiny model: sft -> adapter checkpoint -> eval, export, RL train and resume.

The recipes run in-process (no CLI start-up per run), each in a few seconds on one CPU thread.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from dynamo_cli.cli import CONF_DIR, register_resolvers, to_schema
from dynamo_cli.config.base import ConfigError
from dynamo_cli.config.model import LoraConfig, TinyModelConfig
from dynamo_cli.config.store import register_schemas
from dynamo_cli.models.load import BASE_DIR, is_peft_model, load_checkpoint, load_policy, reference_policy
from dynamo_cli.recipes import eval as eval_recipe
from dynamo_cli.recipes import export as export_recipe
from dynamo_cli.recipes import sft as sft_recipe
from dynamo_cli.recipes import train as train_recipe
from dynamo_cli.runtime.checkpoint import load_trainer_state

register_schemas()
register_resolvers()
LORA = ["model.lora.enabled=true", "model.lora.r=8", "model.lora.alpha=16"]
PROMPTS = ["3+4=", "7*8=", "45+6=", "2+2="]


def compose_schema(command: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        quiet = [] if command == "export" else ["logger=none"]  # export logs nothing: it has no logger group
        return to_schema(compose(config_name=command, overrides=[*quiet, *overrides]))


def greedy_ids(model, tokenizer) -> torch.Tensor:
    """6 greedy tokens per prompt, EOS suppressed: a barely trained model must not stop at once and compare nothing."""
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    return model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def lora_sft(tmp_path_factory) -> Path:
    """A LoRA adapter SFT-trained for a few steps on the tiny model (randomly initialised base)."""
    run_dir = tmp_path_factory.mktemp("lora_sft")
    cfg = compose_schema("sft", [*LORA, "trainer.steps=8", "trainer.batch_size=32", "trainer.micro_batch_size=32",
                                 "trainer.eval_every=0", "trainer.log_every=4", "task.num_train=200",
                                 "eval.max_problems=8", "optim.lr=1e-2", "optim.warmup_steps=0"])
    sft_recipe.run(cfg, run_dir)
    return run_dir / "checkpoints" / "final"


def test_lora_checkpoint_holds_the_adapter_and_a_reloadable_base(lora_sft):
    assert (lora_sft / "adapter_config.json").is_file() and (lora_sft / "adapter_model.safetensors").is_file()
    assert not (lora_sft / "model.safetensors").exists()  # the adapter only, not a second copy of the model
    adapter = load_file(lora_sft / "adapter_model.safetensors")
    assert adapter and all("lora_" in key for key in adapter)
    # the tiny base exists only in memory, so the run wrote it once, next to its checkpoints
    base = lora_sft.parent / BASE_DIR
    assert json.loads((lora_sft / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base.resolve())
    fresh = load_policy(TinyModelConfig(), torch.device("cpu"))[0].state_dict()
    saved = AutoModelForCausalLM.from_pretrained(base).state_dict()
    assert all(torch.equal(fresh[k], saved[k]) for k in fresh)  # SFT trained the adapter, not the base


def test_a_moved_run_finds_its_base_and_a_lost_base_is_one_clear_error(lora_sft, tmp_path):
    moved = tmp_path / "checkpoints"
    shutil.copytree(lora_sft.parent, moved)
    config = json.loads((moved / "final" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "old-place" / BASE_DIR)  # where the run used to live
    (moved / "final" / "adapter_config.json").write_text(json.dumps(config))
    model, _ = load_checkpoint(str(moved / "final"), dtype=torch.float32, merge=False)
    assert model.peft_config["default"].base_model_name_or_path == str(moved / BASE_DIR)
    shutil.rmtree(moved / BASE_DIR)
    with pytest.raises(ConfigError, match="its base model .* is gone"):
        load_checkpoint(str(moved / "final"), dtype=torch.float32)


def test_eval_loads_a_lora_checkpoint_merged(lora_sft, tmp_path):
    cfg = compose_schema("eval", [f"model.path={lora_sft}", "eval.max_problems=6", "eval.n_samples=2", "eval.ks=[1,2]"])
    eval_recipe.run(cfg, tmp_path)
    assert json.loads((tmp_path / "eval.json").read_text())["overall"]["problems"] == 6
    merged, tokenizer = load_policy(cfg.model, torch.device("cpu"))
    adapter, _ = load_checkpoint(str(lora_sft), dtype=torch.float32, merge=False)
    assert not is_peft_model(merged) and is_peft_model(adapter)
    assert torch.equal(greedy_ids(merged, tokenizer), greedy_ids(adapter, tokenizer))


def test_export_writes_a_plain_model_with_the_adapters_greedy_output(lora_sft, tmp_path):
    out = tmp_path / "exported"
    export_recipe.run(compose_schema("export", [f"model.path={lora_sft}", f"output={out}"]), tmp_path)
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(out)  # transformers alone, no peft
    tokenizer = AutoTokenizer.from_pretrained(out)
    adapter, _ = load_checkpoint(str(lora_sft), dtype=torch.float32, merge=False)
    assert torch.equal(greedy_ids(plain, tokenizer), greedy_ids(adapter, tokenizer))
    ids = tokenizer(PROMPTS[:1], return_tensors="pt")
    assert torch.allclose(plain(**ids).logits, adapter(**ids).logits, atol=1e-4)


def test_reference_under_lora_is_the_base_with_the_adapter_disabled():
    model, tokenizer = load_policy(TinyModelConfig(lora=LoraConfig(enabled=True, r=4)), torch.device("cpu"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)  # a trained adapter: the policy now differs from its base
    reference = reference_policy(model, cfg=TinyModelConfig(), device=torch.device("cpu"), resumed=False)
    assert list(reference.parameters()) == []  # no second copy of the weights
    ids = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        base = AutoModelForCausalLM.from_config(model.get_base_model().config)
        base.load_state_dict({k.replace(".base_layer.", "."): v for k, v in model.get_base_model().state_dict().items()
                              if "lora_" not in k})
        assert torch.allclose(reference(**ids).logits, base(**ids).logits, atol=1e-5)
        assert not torch.allclose(model(**ids).logits, base(**ids).logits, atol=1e-3)
    assert model.training  # the reference forward leaves the policy's mode alone


def test_lora_rl_trains_only_the_adapter_and_resumes(lora_sft, tmp_path):
    # the entropy bonus gives a gradient even when every reward is 0 (a nearly untrained policy)
    overrides = [f"model.path={lora_sft}", *LORA, "trainer.prompts_per_step=4", "rollout.n=4", "allocator.n_min=2",
                 "allocator.n_max=8", "eval.max_problems=4", "eval.n_samples=0", "algorithm.micro_batch_size=16",
                 "algorithm.kl_coef=0.1", "algorithm.entropy_coef=0.05", "optim.lr=1e-2", "optim.warmup_steps=0",
                 "trainer.save_every=1", "trainer.eval_every=0", "task.num_train=200",
                 "algorithm.mini_batches=1"]  # one update in step 1: its KL is the starting policy's, exactly 0
    train_recipe.run(compose_schema("train", [*overrides, "trainer.steps=2"]), tmp_path)
    checkpoints = tmp_path / "checkpoints"
    # the starting policy (the SFT adapter merged into its base) was saved as this run's base, untouched
    start, _ = load_checkpoint(str(lora_sft), dtype=torch.float32, merge=True)
    base = AutoModelForCausalLM.from_pretrained(checkpoints / BASE_DIR).state_dict()
    assert all(torch.equal(v, base[k]) for k, v in start.state_dict().items())
    adapter = load_file(checkpoints / "final" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # fresh B = 0; RL moved it
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    kl = [r["train/kl_ref"] for r in records if "train/kl_ref" in r]
    assert kl[0] == 0.0 and kl[-1] > 0  # the reference is the starting policy: KL 0 until the adapter moves

    # resume: the saved adapter continues, trainable, on the same base (so the KL reference is unchanged)
    train_recipe.run(compose_schema("train", [*overrides, "trainer.steps=3", f"trainer.resume={checkpoints / 'final'}"]),
                     tmp_path)
    assert load_trainer_state(checkpoints / "final")["totals"]["step"] == 3
    resumed, _ = load_checkpoint(str(checkpoints / "final"), dtype=torch.float32, merge=False)
    assert is_peft_model(resumed) and resumed.peft_config["default"].base_model_name_or_path == str((checkpoints / BASE_DIR).resolve())
