"""A malformed data file stops every command that reads it, before any work: exit 2, one line naming the file and line."""
from __future__ import annotations

import json

import pytest
from conftest import dynamo


@pytest.mark.parametrize("command", [pytest.param("eval", marks=pytest.mark.smoke), "sft", "train", "score"])
def test_a_malformed_data_file_is_one_line_exit_2_before_any_work(tmp_path, command):
    data = tmp_path / "problems.jsonl"
    data.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n" + json.dumps(["3+3?", "6"]) + "\n")
    extra = [f"input={data}"] if command == "score" else []
    run_dir = tmp_path / "run"
    result = dynamo(command, "task=jsonl", f"task.path={data}", f"hydra.run.dir={run_dir}", "logger=none" if command != "score" else
                    "task.max_problems=10", *extra, check=False, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0] == (f"dynamo {command}: error: {data}:2: a row must be a JSON object with named fields, "
                        "got list ['3+3?', '6']")
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()  # nothing was run
