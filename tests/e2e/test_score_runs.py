"""`dynamo score` on a real run's rollouts.jsonl gives back the rewards training logged (the same verifier, the same code
path), and its bad inputs end in one line, exit 2."""
from __future__ import annotations

import json

from conftest import dynamo
from helpers import TRAIN_SMALL, read_jsonl

TASK = ["task.num_train=2000", "task.levels=[L1]"]  # TRAIN_SMALL's task: the same problems and ids


def test_scoring_a_runs_rollouts_gives_back_its_rewards(sft_checkpoint, tmp_path):
    run = tmp_path / "train"
    dynamo("train", f"hydra.run.dir={run}", f"model.path={sft_checkpoint}", "trainer.steps=2", "trainer.eval_every=0",
           "trainer.dump_rollouts=true", *TRAIN_SMALL)
    rollouts = read_jsonl(run / "rollouts.jsonl")
    assert 0 < sum(r["reward"] for r in rollouts) < len(rollouts)  # some right, some wrong: the comparison means something
    result = dynamo("score", f"hydra.run.dir={tmp_path / 'score'}", f"input={run / 'rollouts.jsonl'}", *TASK)
    scores = read_jsonl(tmp_path / "score" / "scores.jsonl")
    assert [s["prompt_id"] for s in scores] == [r["prompt_id"] for r in rollouts]
    assert [(s["reward"], s["rule"]) for s in scores] == [(r["reward"], r["rule"]) for r in rollouts]
    mean = sum(r["reward"] for r in rollouts) / len(rollouts)
    assert f"score: {len(rollouts)} rows of {run / 'rollouts.jsonl'}: mean reward {mean:.4f}; rules: " in result.stdout
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "score")


def test_score_bad_inputs_exit_2_in_one_line(tmp_path):
    rows = tmp_path / "in.jsonl"
    rows.write_text(json.dumps({"prompt_id": "math/L1/3+x", "completion": "8"}) + "\n")
    for args, expected in [
        (["task=guess", f"input={rows}"], "task=guess is multi-turn"),
        ([f"input={rows}", *TASK], f"{rows}:1: prompt_id 'math/L1/3+x' is not a problem of task=math (train or test); closest: math/L1/3+"),
        (["input=/no/such.jsonl"], "input='/no/such.jsonl': no such file"),
    ]:
        result = dynamo("score", f"hydra.run.dir={tmp_path / 'score'}", *args, check=False, timeout=120)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr
        assert lines[0].startswith("dynamo score: error: ")
