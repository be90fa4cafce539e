"""Python function-writing problems verified by running their tests in a sandbox (verify/sandbox.py).

Reads MBPP-format rows (`text`, `code`, `test_list`, optional `test_setup_code`, `task_id`, `level`) or HumanEval-format
rows (`prompt`, `canonical_solution`, `test`, `entry_point`, `task_id`) from a local JSONL file; the default file is
a fixture of small problems written for this project (tests/fixtures/code_problems.jsonl).

The reward of a completion is the share of its problem's tests that pass (reward_mode=fraction) or 1 only when all
pass (all). Programs run in parallel, `workers` at a time, each in its own sandbox (task.isolation: bubblewrap, or
none). Every test is judged in this process as a value check (verify/sandbox.py parse_check): MBPP's asserts as they
are, HumanEval's check(candidate) function one assert at a time (`humaneval_tests`). A row with a test that cannot be
made a value check (a loop, a helper, a computed expected value) is skipped and counted, never judged inside the
program's process, where the program could forge it.
"""
from __future__ import annotations

import ast
import builtins
import hashlib
import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynamo_cli.config.task import CodeTaskConfig
from dynamo_cli.errors import DynamoError
from dynamo_cli.tasks.answers import Verdict
from dynamo_cli.tasks.base import TASKS, Problem, Task, TaskError, check_format, stable_unit
from dynamo_cli.tasks.jsonl import field, read_rows
from dynamo_cli.verify.sandbox import Check, Limits, Outcome, Sandbox, SandboxError, parse_check
from dynamo_cli.verify.verifiers import FAULT, Verification, warn_faults

REWARD_MODES = ("fraction", "all")
CODE_INSTRUCTION = "Write a Python function for the task below. Reply with the code in a ```python block.\n\n"
_FENCED = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)
STATUSES = ("timeout", "killed", "load_error", "crashed")  # counted per batch as rollout/sandbox_<status>


@dataclass(frozen=True)
class CodeProblem(Problem):
    """A Problem whose `answer` is a reference solution and whose tests decide the reward."""

    tests: tuple[str, ...] = ()  # test statements, e.g. "assert add(1, 2) == 3"
    setup: str = ""  # code run before the program (MBPP's test_setup_code)
    prefix: str = ""  # HumanEval: the signature and docstring the completion continues ("" for MBPP)


def program_of(completion: str, problem: CodeProblem) -> str:
    """The program a completion stands for: its first ```python block if it has one, else all of it; HumanEval-style
    problems prepend the prompt the completion continues."""
    fenced = _FENCED.search(completion)
    code = fenced.group(1) if fenced else completion
    return "\n".join(part for part in (problem.setup, problem.prefix + code) if part)


def code_reward(passed: tuple[bool, ...], mode: str) -> float:
    """fraction: the share of tests passed; all: 1.0 only when every test passed. No tests: 0."""
    if not passed:
        return 0.0
    return sum(passed) / len(passed) if mode == "fraction" else float(all(passed))


def read_code_rows(path: str | Path, max_rows: int | None) -> list[dict]:
    """The file's rows, each checked: a malformed file or row stops here in one line naming the file and line (TaskError:
    see tasks/jsonl.py read_rows), and so does a row in MBPP or HumanEval format whose fields have the wrong type (a
    string test_list would be one test per character). Rows in neither format pass: CodeTask skips and counts them."""
    if not Path(path).is_file():
        raise TaskError(f"code problems file not found: {path}")
    rows = read_rows(path, max_rows)
    for where, row in rows:
        if "text" in row and "test_list" in row:  # MBPP
            field(row, "text", where, (str,))
            tests = field(row, "test_list", where, (list,))
            bad = next((t for t in tests if not isinstance(t, str)), None)
            if bad is not None:
                raise TaskError(f"{where}: field 'test_list' must be a list of test strings, got an item {bad!r:.60}")
            for name in ("code", "test_setup_code"):
                if name in row:
                    field(row, name, where, (str,), required=False)
        elif "prompt" in row and "test" in row and "entry_point" in row:  # HumanEval
            for name in ("prompt", "test", "entry_point"):
                field(row, name, where, (str,))
            if "canonical_solution" in row:
                field(row, "canonical_solution", where, (str,), required=False)
        else:
            continue
        if "task_id" in row:
            field(row, "task_id", where, (str, int), required=False)
    return [row for _, row in rows]


def humaneval_tests(test: str, entry_point: str) -> tuple[str, ...] | None:
    """HumanEval's `def check(candidate): assert candidate(...) == ...` as one assert statement per test that calls the
    entry point by name: ("assert inc(1) == 2", ...). Docstrings, `pass` and `assert True` are dropped. None when the
    check function holds anything else (a loop, a local, a helper of the test module) or an assert that is not a value
    check on the candidate's result (parse_check), or when the value needs a name but the candidate and builtins."""
    try:
        module = ast.parse(test)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    found = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(found) != 1 or len(found[0].args.args) != 1:
        return None
    candidate, allowed = found[0].args.args[0].arg, {entry_point, *dir(builtins)}

    class Rename(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.Name:
            return ast.copy_location(ast.Name(entry_point, node.ctx), node) if node.id == candidate else node

    tests = []
    for statement in found[0].body:
        if isinstance(statement, ast.Pass) or (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)) \
                or (isinstance(statement, ast.Assert) and isinstance(statement.test, ast.Constant) and statement.test.value):
            continue  # a docstring, `pass`, `assert True, "..."`
        if not isinstance(statement, ast.Assert):
            return None
        text = ast.unparse(ast.fix_missing_locations(ast.Assert(Rename().visit(statement.test))))
        check = parse_check(text)
        if check is None or not {n.id for n in ast.walk(ast.parse(check.code)) if isinstance(n, ast.Name)} <= allowed:
            return None
        tests.append(text)
    return tuple(tests) or None


def parse_code_row(row: dict, *, source: str) -> CodeProblem | None:
    """An MBPP or HumanEval row as a CodeProblem; None when it has neither format's fields."""
    if isinstance(row.get("test_list"), str):  # read_code_rows stops these with the line; this guards other callers
        raise TaskError(f"{source}: test_list {row['test_list'][:40]!r} is a string, not a list of tests")
    key = row.get("task_id")
    if "text" in row and "test_list" in row:
        tests = tuple(str(t) for t in row["test_list"])
        question, answer, setup, prefix = str(row["text"]).strip(), str(row.get("code", "")), str(row.get("test_setup_code") or ""), ""
    elif "prompt" in row and "test" in row and "entry_point" in row:
        # one test per assert of check(candidate); kept whole when that cannot be done, which parse_check refuses
        tests = humaneval_tests(str(row["test"]), str(row["entry_point"])) or (f"{row['test']}\ncheck({row['entry_point']})",)
        question, answer, setup, prefix = str(row["prompt"]), str(row.get("canonical_solution", "")), "", str(row["prompt"])
    else:
        return None
    if not question or not tests:
        return None
    key = str(key) if key is not None else hashlib.sha256(question.encode()).hexdigest()[:16]
    return CodeProblem(f"{source}/{key}", question, answer, str(row.get("level") or "all"), tests=tests, setup=setup,
                       prefix=prefix)


class CodeTask(Task):
    """Prompt: the task text and the first `prompt_tests` tests (they show the function's name and signature);
    the completion is the program (plain) or holds it in a ```python block (chat)."""

    name = "code"
    answer_type = "expression"  # unused: the tests decide
    answer_fallback = "none"

    def __init__(self, *, path: str | Path, test_path: str | Path | None = None, test_fraction: float = 0.25, seed: int,
                 format: str = "plain", max_problems: int | None = None, reward_mode: str = "fraction",
                 limits: Limits | None = None, workers: int = 2, prompt_tests: int = 1, isolation: str = "bubblewrap"):
        self.format = check_format(format)
        if reward_mode not in REWARD_MODES:
            raise TaskError(f"unknown reward mode {reward_mode!r}; expected one of {REWARD_MODES}")
        self.reward_mode, self.limits, self.workers, self.prompt_tests = reward_mode, limits or Limits(), workers, prompt_tests
        self.isolation = isolation
        self.source = Path(path).stem
        self.skipped = 0  # rows in neither MBPP nor HumanEval format
        self.unjudged = 0  # rows with a test that is not a value check (parse_check): never run
        self._checks: dict[str, list[Check]] = {}
        problems = self._problems(read_code_rows(path, max_problems))
        if test_path is None:  # by hash of the text, as the jsonl task: the split survives reordering
            self._test = [p for p in problems if stable_unit(p.question) < test_fraction]
            self._train = [p for p in problems if stable_unit(p.question) >= test_fraction]
        else:
            self._train, self._test = problems, self._problems(read_code_rows(test_path, max_problems))
        random.Random(seed).shuffle(self._train)
        self._sandbox: Sandbox | None = None

    def _problems(self, rows: list[dict]) -> list[CodeProblem]:
        problems, seen = [], set()
        for row in rows:
            problem = parse_code_row(row, source=self.source)
            if problem is None or problem.id in seen:
                self.skipped += 1
                continue
            checks = [parse_check(t) for t in problem.tests]
            if any(c is None for c in checks):
                self.unjudged += 1
                continue
            self._checks[problem.id] = checks
            seen.add(problem.id)
            problems.append(problem)
        return problems

    def train_problems(self) -> list[Problem]:
        return list(self._train)

    def test_problems(self) -> list[Problem]:
        return list(self._test)

    def skip_notes(self) -> list[str]:
        notes = super().skip_notes()
        if self.unjudged:
            notes.append(f"task code: skipped {self.unjudged} rows with a test that is not a value check (parse_check): "
                         "such a test could only be judged inside the program's process, where the program can forge it")
        return notes

    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = Sandbox(self.limits, isolation=self.isolation)
        return self._sandbox

    def shown(self, problem: CodeProblem) -> str:
        """The question as the model sees it: MBPP's text and example tests; HumanEval's prompt as it is."""
        if problem.prefix:
            return problem.prefix
        return "\n".join([problem.question, *problem.tests[: self.prompt_tests]]) + "\n"

    def prompt_text(self, problem: Problem, tokenizer: Any = None) -> str:
        if self.format == "plain":
            return self.shown(problem)
        if tokenizer is None:
            raise TaskError(f"task {self.name!r}: the chat format needs a tokenizer")
        messages = [{"role": "user", "content": CODE_INSTRUCTION + self.shown(problem)}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def demonstration(self, problem: Problem) -> str:
        """The reference solution (HumanEval's is the body that continues the prompt)."""
        if self.format == "plain":
            return problem.answer
        return f"```python\n{problem.prefix}{problem.answer}\n```" if problem.prefix else f"```python\n{problem.answer}\n```"

    def checks(self, problem: CodeProblem) -> list[Check]:
        """The problem's tests as value checks (parsed when its file was read; here for a problem built elsewhere)."""
        if problem.id not in self._checks:
            checks = [parse_check(t) for t in problem.tests]
            if any(c is None for c in checks):
                raise TaskError(f"{problem.id}: a test is not a value check (parse_check): {problem.tests}")
            self._checks[problem.id] = checks
        return self._checks[problem.id]

    def run(self, completion: str, problem: CodeProblem) -> Outcome:
        return self.sandbox.run(program_of(completion, problem), self.checks(problem))

    def verdict(self, outcome: Outcome) -> Verdict:
        passed = sum(outcome.passed)
        note = f"{passed}/{len(outcome.passed)} tests" + (f", {outcome.status}: {outcome.detail}" if outcome.status != "ok" else "")
        return Verdict(code_reward(outcome.passed, self.reward_mode), "program", note, status=outcome.status,
                       detail=outcome.detail or None)

    def judge(self, completion: str, problem: Problem) -> Verdict:
        """One completion, in the sandbox (rollouts and eval go through `verifier`, which runs them in parallel)."""
        return self.verdict(self.run(completion, problem))

    def default_verifier(self, *, timeout: float):
        """The sandbox, checked once with a trivial program: a machine that cannot sandbox stops the run here, in one
        line, instead of scoring every program 0."""
        try:
            self.sandbox.check_works()
        except SandboxError as error:
            raise DynamoError(f"task=code cannot run programs in its sandbox: {error}; or set task.isolation=none to run "
                              "them without kernel isolation (docs/robustness.md)") from error
        return SandboxVerifier(self, workers=self.workers)


@TASKS.register(CodeTaskConfig)
def code_task(*, path: str, test_path: str | None, test_fraction: float, seed: int, format: str, max_problems: int | None,
              reward_mode: str, timeout: float, cpu_seconds: int, memory_mb: int, max_processes: int, file_mb: int, workers: int,
              prompt_tests: int, isolation: str) -> CodeTask:
    """task=code from its schema: the sandbox's limits gathered into one Limits."""
    limits = Limits(timeout=timeout, cpu_seconds=cpu_seconds, memory_mb=memory_mb, max_processes=max_processes, file_mb=file_mb)
    return CodeTask(path=path, test_path=test_path, test_fraction=test_fraction, seed=seed, format=format, max_problems=max_problems,
                    reward_mode=reward_mode, limits=limits, workers=workers, prompt_tests=prompt_tests, isolation=isolation)


class SandboxVerifier:
    """Runs a batch's programs `workers` at a time. A program's own failure (a timeout, a limit, an exception) is its
    score, counted as rollout/sandbox_<status>; a failure of the sandbox itself (no process could start, no temp
    dir) scores 0 and counts as rollout/reward_errors."""

    def __init__(self, task: CodeTask, *, workers: int):
        self.task, self.workers = task, workers
        self.note = task.sandbox.describe()  # printed at start (recipes/parts.py): which isolation is in force
        self.isolated = task.sandbox.isolation != "none"  # none: the note is a warning

    def __call__(self, completions: list[str], problems: list) -> Verification:
        def one(args) -> Outcome | Exception:
            try:
                return self.task.run(*args)
            except Exception as error:  # the sandbox's own fault, never the run's end
                return error

        with ThreadPoolExecutor(self.workers) as pool:
            outcomes = list(pool.map(one, zip(completions, problems, strict=True)))
        out = Verification(verdicts=[], counts={f"rollout/sandbox_{s}": 0.0 for s in STATUSES})
        first = None
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                out.errors += 1
                first = first or f"{type(outcome).__name__}: {outcome}"
                out.verdicts.append(FAULT)
                continue
            if outcome.status in STATUSES:
                out.counts[f"rollout/sandbox_{outcome.status}"] += 1
            out.verdicts.append(self.task.verdict(outcome))
        warn_faults(out, first, source="sandbox")
        return out
