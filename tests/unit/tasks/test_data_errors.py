"""Bad data in one line: a malformed data file stops at start with one line naming the file (and the line) and what is
wrong (TaskError, a DynamoError: exit 2 at the CLI); rows skipped for a stated reason are counted and printed."""
from __future__ import annotations

import json

import pytest
from helpers import compose_schema

from dynamo_cli.errors import DynamoError
from dynamo_cli.recipes import parts
from dynamo_cli.tasks.base import TaskError
from dynamo_cli.tasks.chat_jsonl import ChatJsonlTask
from dynamo_cli.tasks.code import CodeTask
from dynamo_cli.tasks.jsonl import JsonlTask

GOOD = {"question": "What is 2+2?", "answer": "4"}


def lines(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


@pytest.mark.parametrize("name, content, expected", [
    ("bad.jsonl", lines(GOOD, b'{"question": "3+3?", "answer": '), ":2: not a JSON line (Expecting value at column 32)"),
    ("bad.jsonl", lines(GOOD, "just a string"), ":2: a row must be a JSON object with named fields, got str 'just a string'"),
    ("bad.json", b'[{"question": "a?", "answer": "1"}, 7]', " row 2: a row must be a JSON object with named fields, got int 7"),
    ("bad.json", b'{"question": "a?"}\n{"oops"', ":2: not a JSON line (Expecting ':' delimiter at column 8)"),
    ("bad.jsonl", lines(GOOD, {"answer": "4"}), ":2: no field 'question'; fields present: answer"),
    ("bad.jsonl", lines(GOOD, {"question": ["2+2?"], "answer": "4"}),
     ":2: field 'question' must be str or null, got list ['2+2?']"),
    ("bad.jsonl", lines(GOOD, {"question": "2+2?", "answer": {"value": 4}}),
     ":2: field 'answer' must be str or int or float or null, got dict {'value': 4}"),
    ("bad.jsonl", lines(GOOD, GOOD, b'{"question": "caf\xe9?", "answer": "1"}'), ":3: not UTF-8 text (byte 17: b'\\xe9')"),
    ("bad.jsonl", b"", ": empty file, no rows"),
    ("bad.jsonl", b"\n  \n", ": empty file, no rows"),
    ("bad.parquet", lines(GOOD), ": not a Parquet file (ArrowInvalid: "),
    ("bad.jsonl", lines({"question": "a?", "answer": "No idea.\nReally."}, {"question": "", "answer": "3"}),
     ": no usable row among its 2: 1 without a final answer, 1 without a question"),
    ("bad.jsonl", lines(GOOD), ": the test split is empty: none of its 1 usable rows falls there with task.test_fraction=0.1"),
])
def test_a_malformed_jsonl_task_file_stops_in_one_line_naming_the_file_and_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TaskError) as caught:
        JsonlTask(path=path, seed=0)
    message = str(caught.value)
    assert message.startswith(str(path)) and expected in message, message
    assert "\n" not in message and isinstance(caught.value, DynamoError)  # the CLI prints it as one line, exit 2


def test_the_id_and_level_fields_are_checked_too(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(lines({"uid": 1, **GOOD}, {"uid": [2], **GOOD}))
    with pytest.raises(TaskError, match=r"rows.jsonl:2: field 'uid' must be str or int, got list \[2\]"):
        JsonlTask(path=path, seed=0, id_field="uid")
    path.write_bytes(lines({"uid": 1, **GOOD}, {"question": "b?", "answer": "5"}))
    with pytest.raises(TaskError, match="rows.jsonl:2: no field 'uid'; fields present: question, answer"):
        JsonlTask(path=path, seed=0, id_field="uid")
    path.write_bytes(lines({**GOOD, "level": {"hard": True}}))
    with pytest.raises(TaskError, match="rows.jsonl:1: field 'level' must be str or int or float or null"):
        JsonlTask(path=path, seed=0, level_field="level")


def test_a_json_array_and_parquet_read_like_json_lines(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": f"{a}+1?", "answer": str(a + 1)} for a in range(40)]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    (tmp_path / "rows.jsonl").write_bytes(lines(*rows))
    tasks = [JsonlTask(path=tmp_path / f"rows.{kind}", seed=0) for kind in ("jsonl", "json", "parquet")]
    assert [p.question for p in tasks[0].train_problems()] == [p.question for p in tasks[1].train_problems()]
    assert tasks[1].train_problems() == tasks[0].train_problems() and tasks[2].test_problems() == tasks[0].test_problems()


@pytest.mark.parametrize("row, expected", [
    ({"text": "Add.", "test_list": "assert add(1, 2) == 3"}, ":2: field 'test_list' must be list, got str 'assert add(1, 2) == 3'"),
    ({"text": "Add.", "test_list": ["assert add(1, 2) == 3", 3]}, ":2: field 'test_list' must be a list of test strings, got an item 3"),
    ({"text": ["Add."], "test_list": ["assert add(1, 2) == 3"]}, ":2: field 'text' must be str, got list ['Add.']"),
    ({"prompt": "def f():\n", "test": None, "entry_point": "f"}, ":2: field 'test' must be str, got NoneType None"),
    ({"text": "Add.", "test_list": ["assert add(1, 2) == 3"], "task_id": 1.5}, ":2: field 'task_id' must be str or int or null"),
])
def test_a_mistyped_code_row_stops_in_one_line_naming_its_line(tmp_path, row, expected):
    path = tmp_path / "code.jsonl"
    path.write_bytes(lines({"text": "Double.", "test_list": ["assert double(2) == 4"]}, row))
    with pytest.raises(TaskError) as caught:
        CodeTask(path=path, seed=0)
    assert str(caught.value).startswith(str(path)) and expected in str(caught.value), str(caught.value)


def test_a_malformed_code_file_stops_too(tmp_path):
    path = tmp_path / "code.jsonl"
    path.write_bytes(b'{"text": "Double.", "test_list": ["assert double(2) == 4"]}\n\xff\n')
    with pytest.raises(TaskError, match=r"code.jsonl:2: not UTF-8 text"):
        CodeTask(path=path, seed=0)
    path.write_bytes(b"")
    with pytest.raises(TaskError, match=r"code.jsonl: empty file, no rows"):
        CodeTask(path=path, seed=0)


def test_a_malformed_dialogue_stops_in_one_line_naming_its_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "The answer is 4."}]}
    path.write_bytes(lines(good, {"messages": "user: 2+2?"}))
    kwargs = dict(test_path=None, messages_field="messages", id_field=None, test_fraction=0.5, seed=0, max_problems=None,
                  answer_type="rational", answer_fallback="auto")
    with pytest.raises(TaskError, match=r"chat.jsonl:2: field 'messages' must be list, got str 'user: 2\+2\?'"):
        ChatJsonlTask(path=str(path), **kwargs)
    path.write_bytes(lines(good, {"turns": []}))
    with pytest.raises(TaskError, match=r"chat.jsonl:2: no field 'messages'; fields present: turns"):
        ChatJsonlTask(path=str(path), **kwargs)


def test_an_empty_split_stops_every_task_at_start(tmp_path):
    path, test_path = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    path.write_bytes(lines(GOOD))
    test_path.write_bytes(lines(GOOD))  # every test row repeats a train row: dropped as a duplicate
    cfg = compose_schema("eval", ["task=jsonl", f"task.path={path}", f"task.test_path={test_path}"]).task
    with pytest.raises(TaskError, match=f"{test_path}: no usable row among its 1: 1 whose id was already taken"):
        parts.build_task(cfg)
    code = tmp_path / "code.jsonl"
    code.write_bytes(lines({"text": "Double.", "test_list": ["assert double(2) == 4"]}))
    cfg = compose_schema("eval", ["task=code", f"task.path={code}", "task.isolation=none"]).task
    with pytest.raises(TaskError, match=f"task=code: the (train|test) split is empty \\({code}\\)"):
        parts.build_task(cfg)


def test_skipped_rows_are_counted_and_printed_once_per_file(tmp_path, capsys):
    path, test_path = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    path.write_bytes(lines(GOOD, {"question": "b?", "answer": "no idea.\nreally."}, GOOD, {"question": "c?", "answer": "2.5"},
                           {"question": "d?", "answer": None}))
    test_path.write_bytes(lines({"question": "e?", "answer": "7"}))
    cfg = compose_schema("eval", ["task=jsonl", f"task.path={path}", f"task.test_path={test_path}", "task.answer_type=integer"]).task
    task = parts.build_task(cfg)
    assert len(task.train_problems()) == 1 and (task.skipped, task.duplicates) == (3, 1)
    assert capsys.readouterr().err.splitlines() == [
        f"dynamo: warning: {path}: skipped 4 rows (2 without a final answer, 1 whose id was already taken, "
        "1 whose answer is not a literal of type integer)"]
