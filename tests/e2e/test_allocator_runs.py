"""The real runs of tests/unit/.../test_rollout_allocators.py: rollout-side allocators (DAPO's dynamic sampling, GRESO, Knapsack RL): pure functions against hand-worked
values, the round protocol without a model, then DAPO through the collect stage's rounds with a tiny model."""
from __future__ import annotations

import json

import pytest

GRESO = dict(n=4, max_rounds=3, p_easy=0.5, p_hard=0.5, target_zero_variance=0.25, delta=0.01, p_min=0.05, p_max=0.95, seed=1,
             explore_min_attempts=4, decay=1.0)


SMALL = ["logger=none", "trainer.prompts_per_step=8", "rollout.n=4", "eval.max_problems=4", "eval.n_samples=0",
         "algorithm.micro_batch_size=16", "task.num_train=2000", "task.levels=[L1,L2]", "trainer.eval_every=0", "optim.lr=1e-3"]

OPTIONS = {  # overrides, a metric only that option writes (None: the sampler writes none)
    "curriculum": (["sampler=curriculum", "sampler.start=0.1"], None),
    "curriculum_online": (["sampler=curriculum", "sampler.order=success"], None),
    "dapo": (["allocator=dapo", "allocator.max_rounds=3"], "alloc/dropped_groups"),
    "greso": (["allocator=greso", "allocator.max_rounds=3"], "alloc/skipped_prompts"),
    "knapsack": (["allocator=knapsack", "allocator.n_min=2", "allocator.n_max=8"], "alloc/expected_informative"),
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_train_two_steps_with_each_rollout_option(option, sft_checkpoint, tmp_path):
    from conftest import dynamo

    overrides, metric = OPTIONS[option]
    dynamo("train", f"model.path={sft_checkpoint}", f"hydra.run.dir={tmp_path}", "trainer.steps=2", "trainer.dump_rollouts=true",
           *SMALL, *overrides)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    steps = [r for r in map(json.loads, lines) if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(metric is None or metric in r for r in steps)
    rollouts = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    if option == "curriculum":  # 10% of the pool unlocked at step 1, easiest level first: L1 only
        assert {r["prompt_id"].split("/")[1] for r in rollouts if r["step"] == 1} == {"L1"}
    total = steps[-1]["rollout/total_rollouts"]
    assert total == len(rollouts) and (total > 64 if option in ("dapo", "greso") else total == 64)  # every rollout counted


def test_dapo_with_the_online_curriculum_resumes_exactly(sft_checkpoint, tmp_path):
    """2 steps, then a resume to 3, against 3 straight: the sampler's counts and fresh-prompt offset and the
    allocator's history come back from the checkpoint (the step-3 metrics and rollouts are the same)."""
    from conftest import dynamo

    args = [f"model.path={sft_checkpoint}", "trainer.dump_rollouts=true", *SMALL, "sampler=curriculum", "sampler.order=success",
            "sampler.pace_steps=4", "allocator=dapo", "allocator.max_rounds=3", "optim.schedule=constant", "optim.warmup_steps=0"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    dynamo("train", f"hydra.run.dir={straight}", "trainer.steps=3", *args)
    dynamo("train", f"hydra.run.dir={resumed}", "trainer.steps=2", *args)
    dynamo("train", f"hydra.run.dir={resumed}", "trainer.steps=3", "trainer.resume=auto", *args)

    def step3(run_dir):
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        last = [r for r in metrics if r.get("step") == 3 and "train/loss" in r][-1]
        rollouts = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
        return {k: v for k, v in last.items() if not k.startswith("time")}, [r for r in rollouts if r["step"] == 3]

    assert step3(resumed) == step3(straight)
