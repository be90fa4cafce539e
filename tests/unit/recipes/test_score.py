"""`dynamo score`: input rows checked line by line, ids looked up in train and test, multi-turn tasks refused, an unknown id
named with valid ones, in one line. Scoring itself, on every single-turn task: tests/e2e/test_score_runs.py."""
from __future__ import annotations

import json

import pytest
from helpers import ARITH_FIXTURE, compose_schema, options

from dynamo_cli.config.base import ConfigError
from dynamo_cli.errors import DynamoError
from dynamo_cli.recipes import parts
from dynamo_cli.recipes import score as score_recipe
from dynamo_cli.tasks.base import TaskError

ARITH = ARITH_FIXTURE


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
