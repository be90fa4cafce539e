"""task=reasoning_gym end to end: a tiny train run on chain_sum, its tags driving the curriculum and the tag prior, its
rewards from the library's scorer in worker processes, and the held-out eval."""
from __future__ import annotations

import json
import re

from conftest import dynamo
from helpers import needs_reasoning_gym, read_jsonl

from dynamo_cli.tasks.answers import RULES


@needs_reasoning_gym
def test_train_on_chain_sum_with_tags_scores_in_workers_and_evaluates(tmp_path):
    result = dynamo("train", f"hydra.run.dir={tmp_path}", "logger=none", "task=reasoning_gym", "task.datasets={chain_sum: 1}",
                    "+task.config.chain_sum.max_terms=3", "task.num_train=64", "task.num_test_per_dataset=6",
                    "sampler=curriculum", "allocator.prior=tag", "trainer.steps=2", "trainer.prompts_per_step=4", "rollout.n=4",
                    "allocator.n_min=2", "allocator.n_max=8", "algorithm.micro_batch_size=16", "algorithm.mini_batches=2",
                    "eval.n_samples=2", "eval.ks=[1,2]", "trainer.eval_every=0", "trainer.save_every=0",
                    "trainer.dump_rollouts=true")
    rollouts = read_jsonl(tmp_path / "rollouts.jsonl")
    assert len(rollouts) == 2 * 4 * 4
    assert all(re.fullmatch(r"chain_sum/\d+", r["prompt_id"]) for r in rollouts)
    assert all(r["reward"] in (0.0, 1.0) and r["rule"] in RULES for r in rollouts)
    assert all(r["prompt"].startswith("State the final answer to the following arithmetic problem:") for r in rollouts)
    steps = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert len(steps) == 2 and all(s["rollout/reward_errors"] == 0 and s["rollout/reward_timeouts"] == 0 for s in steps)
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["overall"]["problems"] == 6 and all(level.startswith("chain_sum/num_terms=") for level in report["levels"])
    train_ids = {r["prompt_id"] for r in rollouts}
    assert not train_ids & {p["id"] for p in report["problems"]}
    assert "Traceback" not in result.stderr
