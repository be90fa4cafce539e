"""Problems from a local JSONL, JSON or Parquet file (GSM8K-style or plain question/answer rows).

Read from the local path only; nothing is fetched from a hub. A malformed file (not JSON, a row that is not an object,
a missing or mistyped field, bad UTF-8, no rows, no usable row, an empty split) stops in one line naming the file and
line before any work; rows that are well formed but unusable (no final answer, an answer not of the answer type, a
duplicate id) are skipped, counted and printed at start.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
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


def read_rows(path: str | Path, max_rows: int | None = None) -> list[tuple[str, dict]]:
    """(where, row) for each row of a local data file, `where` naming the file and line ("data.jsonl:7") or row
    ("data.parquet row 7"), rows counted from 1. JSON Lines (.jsonl, .json), one JSON array of objects (.json) or
    Parquet (.parquet); the first `max_rows` rows. Anything malformed stops here, in one line naming the file and the
    line (TaskError): a missing or empty file, bad UTF-8, a line that is not JSON or not an object, a `.parquet`
    that is not Parquet."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task data file not found: {path}")
    if path.suffix == ".parquet":
        rows = _parquet_rows(path, max_rows)
    else:
        data = path.read_bytes()
        if data.lstrip()[:1] == b"[":
            rows = _json_array_rows(path, data, max_rows)
        else:
            rows = _json_lines(path, data, max_rows)
    if not rows:
        raise TaskError(f"{path}: empty file, no rows")
    return rows


def _json_lines(path: Path, data: bytes, max_rows: int | None) -> list[tuple[str, dict]]:
    rows = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if max_rows is not None and len(rows) >= max_rows:
            break
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise TaskError(f"{where}: not UTF-8 text (byte {error.start}: {raw[error.start:error.start + 1]!r})") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise TaskError(f"{where}: not a JSON line ({error.msg} at column {error.colno})") from None
        rows.append((where, _object(row, where)))
    return rows


def _json_array_rows(path: Path, data: bytes, max_rows: int | None) -> list[tuple[str, dict]]:
    try:
        items = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise TaskError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise TaskError(f"{path}:{error.lineno}: not JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(items, list):
        raise TaskError(f"{path}: a JSON file must hold one row per line or one array of rows, got a {type(items).__name__}")
    items = items if max_rows is None else items[:max_rows]
    return [(f"{path} row {k}", _object(item, f"{path} row {k}")) for k, item in enumerate(items, 1)]


def _parquet_rows(path: Path, max_rows: int | None) -> list[tuple[str, dict]]:
    import pyarrow.parquet as pq  # lazy: only Parquet files need it

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow's errors (ArrowInvalid, OSError) for a file that is not Parquet
        raise TaskError(f"{path}: not a Parquet file ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    if max_rows is not None:
        table = table.slice(0, max_rows)
    return [(f"{path} row {k}", row) for k, row in enumerate(table.to_pylist(), 1)]


def _object(row: object, where: str) -> dict:
    if not isinstance(row, dict):
        raise TaskError(f"{where}: a row must be a JSON object with named fields, got {type(row).__name__} {_short(row)}")
    return row


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def field(row: dict, name: str, where: str, types: tuple[type, ...], *, required: bool = True) -> object:
    """row[name], checked: present (else one line naming the fields the row has) and of one of `types` (None passes
    when not `required`). bool is never an int here."""
    if name not in row:
        raise TaskError(f"{where}: no field {name!r}; fields present: {', '.join(map(str, row)) or 'none'}")
    value = row[name]
    if value is None and not required:
        return None
    if not isinstance(value, types) or isinstance(value, bool):
        allowed = " or ".join(t.__name__ for t in types) + ("" if required else " or null")
        raise TaskError(f"{where}: field {name!r} must be {allowed}, got {type(value).__name__} {_short(value)}")
    return value


def skip_note(path: str | Path, skipped: dict[str, int]) -> str | None:
    """One line: how many rows of `path` were skipped and why (None: none were)."""
    if not any(skipped.values()):
        return None
    return f"{path}: skipped {sum(skipped.values())} rows ({skip_reasons(skipped)})"


def skip_reasons(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in skipped.items() if n) or "none skipped"


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
        self.skips: dict[str, Counter] = {}  # file -> reason -> rows skipped for it
        self._fields = (question_field, answer_field, level_field, id_field)
        self._demos: dict[str, str] = {}  # id -> worked-solution SFT target (chat format only)
        self._ids: set[str] = set()
        problems = self._problems(path, read_rows(path, max_problems))
        if test_path is None:
            # By question hash, not position, so the split survives reordering and appending rows.
            self._test = [p for p in problems if stable_unit(p.question) < test_fraction]
            self._train = [p for p in problems if stable_unit(p.question) >= test_fraction]
            for side, kept in (("test", self._test), ("train", self._train)):
                if not kept:
                    raise TaskError(f"{path}: the {side} split is empty: none of its {len(problems)} usable rows falls there "
                                    f"with task.test_fraction={test_fraction}; add rows, change it or set task.test_path")
        else:
            self._train = problems
            self._test = self._problems(test_path, read_rows(test_path, max_problems))
        random.Random(seed).shuffle(self._train)

    def _problems(self, path: str | Path, rows: list[tuple[str, dict]]) -> list[Problem]:
        """The file's usable rows as problems; malformed ones stop here (TaskError naming the line), unusable ones are
        skipped and counted by reason; a file with no usable row stops too."""
        question_field, answer_field, level_field, id_field = self._fields
        problems, skipped = [], Counter()
        for where, row in rows:
            question = str(field(row, question_field, where, (str,), required=False) or "").strip()
            raw_answer = field(row, answer_field, where, (str, int, float), required=False)
            level = (field(row, level_field, where, (str, int, float), required=False)  # a row without a tag: "all"
                     if level_field is not None and level_field in row else None)
            key = field(row, id_field, where, (str, int)) if id_field is not None else None
            parsed = parse_answer_field(raw_answer)
            if not question:
                skipped["without a question"] += 1
                continue
            if parsed is None:
                skipped["without a final answer"] += 1
                continue
            if not self._typed(parsed[0]):
                skipped[f"whose answer is not a literal of type {self.answer_type}"] += 1
                continue
            answer, solution = parsed
            key = str(key) if key is not None else hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]
            pid = f"{self.name}/{key}"
            if pid in self._ids:
                skipped["whose id was already taken"] += 1
                self.duplicates += 1
                continue
            self._ids.add(pid)
            problems.append(Problem(pid, question, answer, "all" if level is None else str(level)))
            if solution is not None and self.format == "chat":
                self._demos[pid] = self._worked_demo(solution, answer)
        self.skipped += sum(skipped.values()) - skipped["whose id was already taken"]
        self.skips[str(path)] = skipped
        if not problems:
            raise TaskError(f"{path}: no usable row among its {len(rows)}: {skip_reasons(skipped)}")
        return problems

    def skip_notes(self) -> list[str]:
        return [note for path, skipped in self.skips.items() if (note := skip_note(path, skipped))]

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
