"""`dynamo score`: input rows checked line by line, ids looked up in train and test, every single-turn task scored by its
own verifier (task.reward when set), multi-turn tasks refused, an unknown id named with valid ones, in one line."""
from __future__ import annotations

import json
import textwrap

import pytest
from helpers import compose_schema, options

from dynamo_cli.config.base import ConfigError
from dynamo_cli.errors import DynamoError
from dynamo_cli.recipes import parts
from dynamo_cli.recipes import score as score_recipe
from dynamo_cli.tasks.base import TaskError

ARITH = "tests/fixtures/arith_word_problems.jsonl"


def write_rows(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def single_turn_tasks() -> list[str]:
    multi = {"calc", "guess"}  # the environments (tasks/environment.py)
    return [name for name in options("task") if name not in multi]


@pytest.mark.parametrize("row, expected", [
    ('{"prompt_id": "math/L1/3+5", "completion": ', ":2: not a JSON line"),
    ('["math/L1/3+5", "8"]', ":2: a row must be a JSON object with named fields, got list"),
    ({"id": "math/L1/3+5", "completion": "8"}, ":2: no field 'prompt_id'; fields present: id, completion"),
    ({"prompt_id": "math/L1/3+5", "completion": None}, ":2: field 'completion' must be str, got NoneType None"),
    ({"prompt_id": 35, "completion": "8"}, ":2: field 'prompt_id' must be str, got int 35"),
])
def test_a_malformed_input_row_stops_in_one_line_naming_its_line(tmp_path, row, expected):
    path = write_rows(tmp_path / "in.jsonl", [{"prompt_id": "math/L1/3+5", "completion": "8", "step": 1}, row])
    with pytest.raises(TaskError) as caught:
        score_recipe.read_score_rows(path)
    assert str(caught.value).startswith(path) and expected in str(caught.value) and "\n" not in str(caught.value)


def test_extra_fields_are_ignored_so_rollouts_jsonl_is_an_input(tmp_path):
    path = write_rows(tmp_path / "rollouts.jsonl", [{"step": 3, "prompt_id": "a/1", "prompt": "1+1=", "completion": "2",
                                                     "reward": 1.0, "rule": "last_number", "n_alloc": 4, "advantage": 0.5}])
    (row,) = score_recipe.read_score_rows(path)
    assert (row.where, row.prompt_id, row.completion) == (f"{path}:1", "a/1", "2")


def test_an_unknown_prompt_id_is_one_line_showing_the_closest_valid_ids(tmp_path):
    cfg = compose_schema("score", ["task.levels=[L3]", f"input={write_rows(tmp_path / 'in.jsonl', [])}"])
    task = parts.build_task(cfg.task)
    problems = score_recipe.problems_by_id(task)
    assert set(problems) == {p.id for p in task.train_problems() + task.test_problems()}  # train and test alike
    known = task.test_problems()[0].id
    rows = score_recipe.read_score_rows(write_rows(tmp_path / "in.jsonl", [{"prompt_id": known, "completion": "1"},
                                                                           {"prompt_id": "math/L3/12+x", "completion": "1"}]))
    with pytest.raises(DynamoError) as caught:
        score_recipe.match_problems(rows, problems, task_name="math")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'in.jsonl'}:2: prompt_id 'math/L3/12+x' is not a problem of task=math (train or test); "
                              "closest: math/L3/12+") and f"({len(problems)} ids in all)" in message and "\n" not in message
    rows = score_recipe.read_score_rows(write_rows(tmp_path / "in.jsonl", [{"prompt_id": "zzz", "completion": "1"}]))
    with pytest.raises(DynamoError, match=r"prompt_id 'zzz' is not a problem of task=math \(train or test\); for example: math/L3/"):
        score_recipe.match_problems(rows, problems, task_name="math")


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


@pytest.mark.parametrize("task_name", ["calc", "guess"])
def test_a_multi_turn_task_is_refused_in_one_line(tmp_path, task_name):
    path = write_rows(tmp_path / "in.jsonl", [{"prompt_id": "x", "completion": "1"}])
    with pytest.raises(ConfigError, match=f"^task={task_name} is multi-turn \\(its rewards come from a dialogue with its "
                                          "environment\\): dynamo score scores single completions; choose a single-turn task$"):
        compose_schema("score", [f"task={task_name}", f"input={path}"])
    with pytest.raises(ConfigError, match="input='/no/such.jsonl': no such file"):
        compose_schema("score", ["input=/no/such.jsonl"])


def test_the_refused_tasks_are_exactly_the_environments():
    from dynamo_cli.config.task import EnvironmentTaskConfig

    for name in options("task"):
        path = [f"task.path={ARITH}"] if name == "jsonl" else []
        assert isinstance(compose_schema("train", [f"task={name}", *path]).task, EnvironmentTaskConfig) == (name not in single_turn_tasks())
