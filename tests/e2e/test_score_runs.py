"""`dynamo score` on a real run's rollouts.jsonl gives back the rewards training logged (the same verifier, the same code
path), and its bad inputs end in one line, exit 2."""
from __future__ import annotations

import json
import textwrap

import pytest
from conftest import REPO, dynamo
from helpers import TRAIN_SMALL, compose_schema, options, read_jsonl

from dynamo_cli.recipes import parts
from dynamo_cli.recipes import score as score_recipe

TASK = ["task.num_train=2000", "task.levels=[L1]"]  # TRAIN_SMALL's task: the same problems and ids
ARITH = REPO / "tests" / "fixtures" / "arith_word_problems.jsonl"


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def single_turn_tasks() -> list[str]:
    return [name for name in options("task") if name not in ("calc", "guess")]  # the environments are refused


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


@pytest.mark.parametrize("task_name", single_turn_tasks())
def test_every_single_turn_task_scores_its_demonstrations_1_and_junk_0(tmp_path, task_name, capsys):
    extra = {"jsonl": [f"task.path={ARITH}"], "code": ["task.isolation=none"] if task_name == "code" else []}.get(task_name, [])
    cfg = compose_schema("score", [f"task={task_name}", *extra, f"input={write_rows(tmp_path / 'in.jsonl', [])}"])
    task = parts.build_task(cfg.task)
    test, train = task.test_problems()[0], task.train_problems()[0]
    rows = [{"prompt_id": test.id, "completion": task.demonstration(test)},
            {"prompt_id": train.id, "completion": task.demonstration(train)},
            {"prompt_id": test.id, "completion": "I do not know."}]
    cfg.input = write_rows(tmp_path / "in.jsonl", rows)
    score_recipe.run(cfg, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / score_recipe.SCORES_FILE).read_text().splitlines()]
    assert [line["prompt_id"] for line in lines] == [test.id, train.id, test.id]
    assert [line["reward"] for line in lines] == [1.0, 1.0, 0.0], lines
    assert [line["status"] for line in lines[:2]] == ["ok", "ok"]  # the junk's: ok (no answer) or, task=code, load_error
    assert set(lines[0]) == {"prompt_id", "reward", "rule", "status", "detail"}
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"score: 3 rows of {cfg.input}: mean reward 0.6667; rules: ") and "; statuses: ok " in out[0]
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_task_reward_scores_as_in_training(tmp_path):
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text(textwrap.dedent("""
        def length(completion, problem):
            return float(len(completion)) if problem["id"].startswith("math/") else -1.0
    """))
    cfg = compose_schema("score", ["task.levels=[L1]", f"task.reward={rewards}:length", f"input={write_rows(tmp_path / 'in.jsonl', [])}"])
    pid = parts.build_task(cfg.task).test_problems()[0].id
    cfg.input = write_rows(tmp_path / "in.jsonl", [{"prompt_id": pid, "completion": "abc"}, {"prompt_id": pid, "completion": ""}])
    score_recipe.run(cfg, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / score_recipe.SCORES_FILE).read_text().splitlines()]
    assert [(line["reward"], line["rule"]) for line in lines] == [(3.0, "reward_fn"), (0.0, "reward_fn")]
