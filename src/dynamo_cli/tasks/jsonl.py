"""Problems from a local JSONL or Parquet file (GSM8K-style or plain question/answer rows).

Read with `datasets` from the local path only; nothing is fetched from a hub. Rows whose final
answer cannot be found are skipped and counted rather than crashing a long run on one bad line.
"""
from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

from dynamo_cli.config.task import JsonlTaskConfig
from dynamo_cli.tasks.answers import extract_answer, literal_value
from dynamo_cli.tasks.base import TASKS, Problem, Task, TaskError, check_answer_rules, check_format, stable_unit

SHORT_ANSWER_CHARS = 64  # a one-line answer field this short is the final answer itself
_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's "<<48/2=24>>" annotations: noise in SFT targets


def parse_answer_field(raw: object) -> tuple[str, str | None] | None:
    """(final answer, worked solution or None) from an answer field, None when no final answer.

    GSM8K: "...reasoning...\\n#### 1,234" -> ("1234", "...reasoning..."). Otherwise a short
    one-line field is the answer itself ("42", "\\frac{1}{2}"), and a long one must hold a
    \\boxed{} answer (MATH-style solutions).
    """
    if raw is None:
        return None
    text = str(raw).strip()
    if "####" in text:
        solution, _, final = text.rpartition("####")
        final = final.strip().replace(",", "")
        return (final, solution.strip() or None) if re.search(r"\d", final) else None
    if text and "\n" not in text and len(text) <= SHORT_ANSWER_CHARS:
        return text, None
    if "\\boxed" in text and (boxed := extract_answer(text)):
        return boxed, text
    return None


def _read_rows(path: str | Path, fields: list[str], max_rows: int | None) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task data file not found: {path}")
    kind = "parquet" if path.suffix == ".parquet" else "json"
    from datasets import load_dataset  # lazy: importing datasets takes about a second

    try:
        ds = load_dataset(kind, data_files=str(path), split="train")
    except Exception as e:
        raise TaskError(f"could not read {path} as {kind}: {type(e).__name__}: {e}") from e
    for field in fields:
        if field not in ds.column_names:
            raise TaskError(
                f"field {field!r} not found in {path}; fields present: {', '.join(ds.column_names)}"
            )
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    return ds.to_list()


@TASKS.register(JsonlTaskConfig)
class JsonlTask(Task):
    """Question/answer rows from a file; ids from `id_field` or a hash of the question.

    Without `test_path`, a row is test iff the hash of its question is below `test_fraction`.
    `max_problems` keeps the first rows of each file (seed-independent, so evals stay comparable).
    A row whose id was already seen is dropped, including test rows that duplicate train rows, and a
    row whose answer is not a literal of `answer_type` is skipped (an integer task cannot use "24.5").
    """

    def __init__(
        self,
        *,
        path: str | Path,
        test_path: str | Path | None = None,
        question_field: str = "question",
        answer_field: str = "answer",
        level_field: str | None = None,
        id_field: str | None = None,
        test_fraction: float = 0.1,
        seed: int,
        format: str = "chat",
        max_problems: int | None = None,
        answer_type: str = "rational",
        answer_fallback: str = "auto",
    ):
        self.format = check_format(format)
        self.answer_type, self.answer_fallback = check_answer_rules(answer_type, answer_fallback, format)
        self.name = Path(path).stem
        self.skipped = 0  # rows without a question, or without a final answer of the answer type
        self.duplicates = 0  # rows whose id was already taken (same question, or same id_field)
        self._fields = (question_field, answer_field, level_field, id_field)
        self._demos: dict[str, str] = {}  # id -> worked-solution SFT target (chat format only)
        self._ids: set[str] = set()
        fields = [f for f in self._fields if f is not None]
        problems = self._problems(_read_rows(path, fields, max_problems))
        if test_path is None:
            # By question hash, not position, so the split survives reordering and appending rows.
            self._test = [p for p in problems if stable_unit(p.question) < test_fraction]
            self._train = [p for p in problems if stable_unit(p.question) >= test_fraction]
        else:
            self._train = problems
            self._test = self._problems(_read_rows(test_path, fields, max_problems))
        random.Random(seed).shuffle(self._train)

    def _problems(self, rows: list[dict]) -> list[Problem]:
        question_field, answer_field, level_field, id_field = self._fields
        problems = []
        for row in rows:
            question = str(row[question_field] or "").strip()
            parsed = parse_answer_field(row[answer_field])
            if not question or parsed is None or not self._typed(parsed[0]):
                self.skipped += 1
                continue
            answer, solution = parsed
            key = (
                str(row[id_field])
                if id_field is not None
                else hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]
            )
            pid = f"{self.name}/{key}"
            if pid in self._ids:
                self.duplicates += 1
                continue
            self._ids.add(pid)
            level = row[level_field] if level_field is not None else None
            problems.append(Problem(pid, question, answer, "all" if level is None else str(level)))
            if solution is not None and self.format == "chat":
                self._demos[pid] = self._worked_demo(solution, answer)
        return problems

    def _typed(self, answer: str) -> bool:
        return self.answer_type == "expression" or literal_value(answer, self.answer_type) is not None

    @staticmethod
    def _worked_demo(solution: str, answer: str) -> str:
        """The worked solution ending "The answer is \\boxed{x}." (kept as is if already boxed)."""
        if "\\boxed" in solution:
            return solution
        steps = _CALCULATOR.sub("", solution).strip()
        return f"{steps}\nThe answer is \\boxed{{{answer}}}."

    def train_problems(self) -> list[Problem]:
        """Seed-shuffled."""
        return list(self._train)

    def test_problems(self) -> list[Problem]:
        """In file order, independent of the seed."""
        return list(self._test)

    def demonstration(self, problem: Problem) -> str:
        return self._demos.get(problem.id) or super().demonstration(problem)
