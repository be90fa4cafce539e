"""The real runs of tests/unit/.../test_multiturn.py: multi-turn: environment tokens are read, never trained on; batched dialogues with a scripted environment;
the calculator and guessing environments; dialogue SFT with loss on assistant turns only (task=chat_jsonl)."""
from __future__ import annotations

import json

from conftest import dynamo

TINY = ["logger=none", "device=cpu", "model.hidden_size=32", "model.num_layers=1", "model.intermediate_size=64", "model.num_heads=2"]


def test_train_on_an_environment_logs_turns_and_dumps_every_turn(tmp_path):
    dynamo("train", f"hydra.run.dir={tmp_path}", "task=calc", *TINY, "task.num_test_per_level=2", "task.num_train=40",
           "trainer.steps=2", "trainer.prompts_per_step=2", "rollout.n=4", "rollout.max_batch_size=8", "algorithm.micro_batch_size=4",
           "algorithm.mini_batches=2", "eval.n_samples=0", "eval.batch_size=8", "trainer.eval_every=0", "trainer.dump_rollouts=true")
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(s["rollout/turns"] >= 1 and "rollout/tool_calls" in s for s in steps if "train/loss" in s)
    assert "eval/turns" in steps[-1] and "eval/tool_calls" in steps[-1]
    rollouts = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 16 and all(r["turns"][0]["who"] == "environment" and r["turns"][1]["who"] == "policy" for r in rollouts)


def test_sft_on_dialogues(tmp_path):
    dynamo("sft", f"hydra.run.dir={tmp_path}", "task=chat_jsonl", *TINY, "trainer.steps=3", "trainer.batch_size=4", "eval.batch_size=8",
           "trainer.log_every=1")
    assert (tmp_path / "checkpoints" / "final").is_dir() and json.loads((tmp_path / "eval.json").read_text())["overall"]["problems"] > 0
