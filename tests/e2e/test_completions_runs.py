"""Rollouts a user can read, in a real run: W&B (offline) gets a table of each step's sampled completions, the plain
console the step's best and worst completion and eval's progress."""
from __future__ import annotations

import json

from conftest import dynamo
from helpers import read_jsonl


def test_train_logs_completions_to_wandb_and_the_console(tmp_path):
    result = dynamo("train", f"hydra.run.dir={tmp_path}", "logger.mode=offline", "trainer.steps=2", "trainer.prompts_per_step=4",
                    "rollout.n=4", "allocator.n_min=2", "allocator.n_max=8", "algorithm.micro_batch_size=16",
                    "algorithm.mini_batches=2", "task.num_train=200", "task.levels=[L1]", "eval.max_problems=8",
                    "eval.n_samples=2", "eval.ks=[1,2]", "eval.batch_size=4", "trainer.eval_every=1", "trainer.save_every=0",
                    "trainer.log_completions_every=1", "trainer.log_completions_rows=5", "trainer.dump_rollouts=true")
    run = next(tmp_path.glob("wandb/offline-run-*"))
    dumped = read_jsonl(tmp_path / "rollouts.jsonl")
    for step in (1, 2):
        tables = list(run.glob(f"files/media/table/rollouts/completions_{step}_*.table.json"))
        assert len(tables) == 1, f"step {step}: {tables}"
        table = json.loads(tables[0].read_text())
        rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
        assert len(rows) == 5 and all(row in dumped for row in rows)  # rows of rollouts.jsonl, its keys, that step's
        assert {row["step"] for row in rows} == {step}
    out = result.stdout
    assert out.count("  best: math/L1/") == 2 and out.count("  worst: math/L1/") == 2
    # eval's progress in plain lines: 8 greedy + 16 sampled sequences, a line at each quarter, before RL and after each step
    assert out.count("eval: 24/24 sequences generated and judged") == 3
