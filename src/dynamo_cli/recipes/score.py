"""`dynamo score task=<task> input=<file.jsonl>`: score given completions with the task's own verifier.

One input row per line: {"prompt_id": <id as rollouts.jsonl writes it>, "completion": <text>} (other fields, such as
the rest of a rollouts.jsonl line, are ignored). For task=code the id is `<file stem>/<task_id>`. Ids are looked up
in the task's train and test problems alike. The completions are judged by `task.verifier`, the call training makes
on every rollout (rollout/episodes.py `score`): the task's judge, the code sandbox, or task.reward when set. Writes
`scores.jsonl` into the run dir (one line per input row: prompt_id, reward, rule, status, detail; replaced whole) and
prints a summary. Users audit a run's rewards this way (score its rollouts.jsonl and compare) and score other models'
outputs. Multi-turn tasks (calc, guess) are refused at start: their rewards come from a dialogue, not one completion.
"""
from __future__ import annotations

import difflib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from dynamo_cli.config.recipes import ScoreConfig
from dynamo_cli.errors import DynamoError
from dynamo_cli.recipes.parts import build_task
from dynamo_cli.runtime import atomic
from dynamo_cli.tasks.base import Problem
from dynamo_cli.tasks.jsonl import field, read_rows
from dynamo_cli.verify.verifiers import Verification

SCORES_FILE = "scores.jsonl"
SHOWN_IDS = 3  # valid ids an unknown-id error shows


@dataclass(frozen=True)
class ScoreRow:
    where: str  # "<file>:<line>"
    prompt_id: str
    completion: str


def read_score_rows(path: str | Path) -> list[ScoreRow]:
    """The input's rows, each checked: an object with a string prompt_id and a string completion. Anything malformed
    stops in one line naming the file and line (TaskError, a DynamoError)."""
    return [ScoreRow(where, field(row, "prompt_id", where, (str,)), field(row, "completion", where, (str,)))
            for where, row in read_rows(path)]


def problems_by_id(task) -> dict[str, Problem]:
    """Every problem of the task, train and test, by id (the first of a repeated one)."""
    found: dict[str, Problem] = {}
    for problem in [*task.test_problems(), *task.train_problems()]:
        found.setdefault(problem.id, problem)
    return found


def match_problems(rows: list[ScoreRow], problems: dict[str, Problem], *, task_name: str) -> list[Problem]:
    """Each row's problem; an unknown id is a one-line DynamoError that shows a few valid ids (the closest first)."""
    matched = []
    for row in rows:
        problem = problems.get(row.prompt_id)
        if problem is None:
            close = difflib.get_close_matches(row.prompt_id, list(problems), n=SHOWN_IDS)
            shown = close or list(problems)[:SHOWN_IDS]
            raise DynamoError(f"{row.where}: prompt_id {row.prompt_id!r} is not a problem of task={task_name} (train or test); "
                              f"{'closest' if close else 'for example'}: {', '.join(shown)} ({len(problems)} ids in all)")
        matched.append(problem)
    return matched


def score_lines(rows: list[ScoreRow], verification: Verification) -> list[dict]:
    """scores.jsonl's lines: the reward, the rule that found the answer (tasks/answers.py RULES), the status (ok, or why
    the verification failed: error, timeout; task=code: the program's end) and the detail (the answer that decided,
    the tests passed, or what failed)."""
    return [{"prompt_id": row.prompt_id, "reward": verdict.reward, "rule": verdict.rule, "status": verdict.status,
             "detail": verdict.detail if verdict.detail is not None else verdict.extracted}
            for row, verdict in zip(rows, verification.verdicts, strict=True)]


def summary(lines: list[dict], *, source: str) -> str:
    """Rows, mean reward, and the count of each rule and status."""
    mean = sum(line["reward"] for line in lines) / len(lines)
    rules = ", ".join(f"{k} {v}" for k, v in Counter(line["rule"] for line in lines).most_common())
    statuses = ", ".join(f"{k} {v}" for k, v in Counter(line["status"] for line in lines).most_common())
    return f"score: {len(lines)} rows of {source}: mean reward {mean:.4f}; rules: {rules}; statuses: {statuses}"


def run(cfg: ScoreConfig, run_dir: Path) -> None:
    rows = read_score_rows(cfg.input)
    task = build_task(cfg.task)  # as training builds it: the task's verifier, or task.reward's workers
    try:
        problems = match_problems(rows, problems_by_id(task), task_name=cfg.task.name)
        verification = task.verifier([row.completion for row in rows], problems)  # what training calls on its rollouts
    finally:
        close = getattr(task.verifier, "close", None)
        if close is not None:  # task.reward's worker processes
            close()
    lines = score_lines(rows, verification)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    atomic.write_text(run_dir / SCORES_FILE, "".join(json.dumps(line) + "\n" for line in lines))
    print(summary(lines, source=cfg.input))
    print(f"scores: {run_dir / SCORES_FILE}")
