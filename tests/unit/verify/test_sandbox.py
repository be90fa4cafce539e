"""task=code's sandbox: every test form becomes a value check judged here, values cross as plain data, programs run
isolated and the run goes on; the maths of the checks by hand. The attacker's corpus is test_sandbox_attacks.py."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from conftest import FIXTURES
from helpers import needs_bubblewrap

from dynamo_cli.errors import DynamoError
from dynamo_cli.tasks.code import CodeProblem, CodeTask, code_reward, humaneval_tests, program_of
from dynamo_cli.verify.sandbox import (
    NOT_LITERAL,
    Check,
    Limits,
    Sandbox,
    SandboxError,
    decode,
    holds,
    literal,
    parse_check,
    read_results,
)
from dynamo_cli.verify.sandbox_child import encode

FIXTURE = FIXTURES / "code_problems.jsonl"
LIMITS = Limits(timeout=10.0, cpu_seconds=1, memory_mb=256, max_processes=6)  # a generous wall clock: this machine is shared
ADD = CodeProblem("code/add", "Write add(a, b).", "def add(a, b):\n    return a + b", "L1",
                  tests=("assert add(1, 2) == 3", "assert add(-4, 4) == 0", "assert add(10, 32) == 42"))
GOOD = "def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def task():
    return CodeTask(path=FIXTURE, seed=0, limits=LIMITS, workers=2)


# ------------------------------------------------------------------------------------------- pure parts
@pytest.mark.parametrize("test, check", [
    ("assert add(1, 2) == 3", Check("add(1, 2)", "==", 3)),
    ("assert 3 == add(1, 2)", Check("add(1, 2)", "==", 3)),  # the literal on the left
    ("assert f('a') == {'a': [1, 2]}, 'message'", Check("f('a')", "==", {"a": [1, 2]})),  # the message is ignored
    ("assert set(f(1)) == set((4, 5))", Check("set(f(1))", "==", {4, 5})),  # an expected value built with set()
    ("assert f(1) == float('inf')", Check("f(1)", "==", math.inf)),
    ("assert f(1) == -2 + 1j", Check("f(1)", "==", -2 + 1j)),
    ("assert f(1) != 2", Check("f(1)", "!=", 2)),
    ("assert f(1) < 2", Check("f(1)", "<", 2)),
    ("assert 2 <= f(1)", Check("f(1)", ">=", 2)),  # mirrored: 2 <= v is v >= 2
    ("assert f(1) in (1, 2)", Check("f(1)", "in", (1, 2))),
    ("assert 'x' in f(1)", Check("f(1)", "contains", "x")),
    ("assert f(1) is True", Check("f(1)", "is", True)),
    ("assert f(1) is not None", Check("f(1)", "is not", None)),
    ("assert f(1)", Check("f(1)", "truthy", None)),
    ("assert not f(1)", Check("f(1)", "falsy", None)),
    ("assert abs(f(1) - 0.5) < 1e-6", Check("f(1)", "abs<", 0.5, abs_tol=1e-6)),
    ("assert abs(0.5 - f(1)) <= 0.01", Check("f(1)", "abs<=", 0.5, abs_tol=0.01)),
    ("assert math.fabs(f(1) - 2) < 1e-3", Check("f(1)", "abs<", 2, abs_tol=1e-3)),
    ("assert math.isclose(f(1), 12.56, rel_tol=0.001)", Check("f(1)", "isclose", 12.56, rel_tol=0.001)),
    ("assert isclose(3.0, f(1))", Check("f(1)", "isclose", 3.0, rel_tol=1e-9)),
])
def test_parse_check_turns_each_assert_form_into_a_value_check(test, check):
    assert parse_check(test) == check


@pytest.mark.parametrize("test", [
    "assert f(1) == g(2)",  # the expected value is computed: it would have to run somewhere
    "assert f(1) == 2 == g(3)",  # chained
    "assert f(1) is 5",  # identity of an int depends on the interpreter
    "assert True",  # checks nothing
    "assert [0] * 10 == f(1)",  # no arithmetic beyond + and - on numbers
    "x = f(1)\nassert x == 2",
    "f(1)",
    "check(f)",
    "assert f(1) ==",  # not Python
    "assert math.isclose(f(1), 2, tolerance=1)",
])
def test_parse_check_refuses_what_is_not_a_value_check(test):
    assert parse_check(test) is None


def test_holds_by_hand():
    assert holds(Check("v", "==", 3), 3) and not holds(Check("v", "==", 3), 4)
    assert holds(Check("v", "==", (1, 2)), (1, 2)) and not holds(Check("v", "==", (1, 2)), [1, 2])  # a list is no tuple
    assert holds(Check("v", "==", 1.0), 1)  # Python ==, as the assert would
    assert holds(Check("v", "contains", "x"), "axb") and holds(Check("v", "not in", [1]), 2)
    assert holds(Check("v", "truthy", None), [0]) and holds(Check("v", "falsy", None), [])
    assert holds(Check("v", "is", None), None) and not holds(Check("v", "is", True), 1)
    # |0.5000004 - 0.5| = 4e-7 < 1e-6; |0.502 - 0.5| = 2e-3 is not
    assert holds(Check("v", "abs<", 0.5, abs_tol=1e-6), 0.5000004) and not holds(Check("v", "abs<", 0.5, abs_tol=1e-6), 0.502)
    # isclose with rel_tol 1e-3: |12.57 - 12.56| = 0.01 <= 1e-3 * 12.57 = 0.01257
    assert holds(Check("v", "isclose", 12.56, rel_tol=1e-3), 12.57) and not holds(Check("v", "isclose", 12.56, rel_tol=1e-4), 12.57)
    # a value of the wrong type is a failed check, never an error
    assert not holds(Check("v", "abs<", 0.5, abs_tol=1.0), [1]) and not holds(Check("v", "<", 2), "a")


def test_literal_builds_expected_values_from_literals_and_a_few_builtins():
    def value(text):
        import ast

        return literal(ast.parse(text, mode="eval").body)

    assert value("[1, (2, 'a'), {3}]") == [1, (2, "a"), {3}]
    assert value("sorted([3, 1])") == [1, 3] and value("frozenset({1})") == frozenset({1})
    assert value("tuple([1, -2.5])") == (1, -2.5)
    for computed in ("f(1)", "len([1])", "set([x])", "__import__('os')", "[1] * 3", "2 ** 10", "{**x}"):
        assert value(computed) is NOT_LITERAL


PLAIN = [None, True, 3, -2.5, math.inf, "é", b"\x00a", 1 + 2j, [1, [2]], (1, "a"), {1, 2}, frozenset({3}),
         {"a": [1, (2, 3)], 4: None}, ()]


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_plain_values_cross_as_tagged_json_and_come_back_the_same(value):
    wire = json.loads(json.dumps(encode(value)))  # what the parent reads from the pipe
    back = decode(wire)
    assert back == value and type(back) is type(value)


def test_encode_refuses_anything_but_exact_builtin_values():
    class Rigged(int):
        def __eq__(self, other):
            return True

    deep: list = []
    for _ in range(60):
        deep = [deep]
    for value in (Rigged(3), object(), [1, Rigged(1)], {"a": object()}, deep, float.fromhex):
        with pytest.raises(TypeError):
            encode(value)


@pytest.mark.parametrize("wire", [{"tuple": [1], "list": [2]}, {"object": []}, {"set": [[1]]}, {"bytes": "zz"},
                                  {"complex": ["1", 2]}, [1, 2], {"dict": [[1]]}])
def test_decode_refuses_what_the_child_never_writes(wire):
    with pytest.raises((ValueError, TypeError)):
        decode(wire)


def test_read_results_compares_values_in_the_parent_and_the_last_report_wins():
    checks = [Check("f(1)", "==", 3), Check("f(2)", "==", [1, 2]), Check("g()", "truthy", None), Check("f(3)", "==", 1)]
    text = "\n".join(['[0, "value", 3]', '[1, "value", {"list": [1, 3]}]', '[2, "value", {"list": [0]}]',
                      '[3, "pass", null]',  # no "pass" is ever one: only a value decides
                      '[0, "value", 4]',  # ... and the later report for a check wins
                      '[1, "value", {"tuple": [1, 2]}]',  # (1, 2) != [1, 2]
                      'garbage', '[9, "value", 1]', '[' * 5000, '[3, "value", {"object": 1}]'])
    assert read_results(text, checks) == ([False, False, True, False], None)
    assert read_results('["load", "SyntaxError"]', checks) == ([False] * 4, "SyntaxError")


def test_code_reward_fraction_and_all():
    assert code_reward((True, False, True, True), "fraction") == 0.75  # 3 of 4
    assert code_reward((True, False, True, True), "all") == 0.0
    assert code_reward((True, True), "all") == 1.0
    assert code_reward((), "fraction") == 0.0


def test_program_of_takes_the_fenced_block_and_prepends_a_prefix():
    assert program_of("Here:\n```python\ndef f():\n    return 1\n```\nDone.", ADD) == "def f():\n    return 1\n"
    assert program_of("def f(): return 1", ADD) == "def f(): return 1"
    humaneval = CodeProblem("h/0", "def f(x):\n", "    return x\n", "all", tests=("assert f(1) == 1",), prefix="def f(x):\n")
    assert program_of("    return x\n", humaneval) == "def f(x):\n    return x\n"


def test_humaneval_check_functions_become_one_value_check_per_assert():
    test = ('METADATA = {"author": "x"}\n\ndef check(candidate):\n    """doc"""\n    assert candidate(1) == 2, "one"\n'
            '    assert abs(candidate(0.5) - 1.5) < 1e-6\n    assert not candidate(-1)\n    assert True, "the end"\n')
    assert humaneval_tests(test, "inc") == ("assert inc(1) == 2", "assert abs(inc(0.5) - 1.5) < 1e-06", "assert not inc(-1)")
    for unjudgeable in ("def check(candidate):\n    for x in range(3):\n        assert candidate(x) == x + 1\n",  # a loop
                        "import math\ndef check(candidate):\n    assert candidate(math.pi) == 2\n",  # a name of the test module
                        "def check(candidate):\n    assert candidate(1) == candidate(2)\n",  # no expected literal
                        "def check(candidate):\n    x = 1\n    assert candidate(x) == 2\n",  # a local
                        "def check(c, d):\n    assert c(1) == 2\n", "def check(candidate):\n    pass\n", "not python ("):
        assert humaneval_tests(unjudgeable, "inc") is None


# ---------------------------------------------------------------------------------------- the fixture
@needs_bubblewrap
def test_every_fixture_solution_passes_and_a_wrong_one_does_not(task):
    problems = task.train_problems() + task.test_problems()
    assert 20 <= len(problems) <= 40 and task.skipped == 0 and task.unjudged == 0
    verification = task.verifier([task.demonstration(p) for p in problems], problems)
    assert [v.reward for v in verification.verdicts] == [1.0] * len(problems)
    wrong = task.verifier(["def add(a, b):\n    return a + b if a > 0 else 1\n"], [ADD]).verdicts[0]
    assert wrong.reward == pytest.approx(2 / 3) and wrong.rule == "program"  # 3 ✓, 1 ≠ 0 ✗, 42 ✓
    assert wrong.extracted == "2/3 tests" and wrong.status == "ok"


@needs_bubblewrap
def test_reward_mode_all_needs_every_test():
    half = "def add(a, b):\n    return 3 if a == 1 else a * b\n"  # 3 ✓, -16 ✗, 320 ✗
    frac = CodeTask(path=FIXTURE, seed=0, limits=LIMITS, reward_mode="fraction").judge(half, ADD).reward
    every = CodeTask(path=FIXTURE, seed=0, limits=LIMITS, reward_mode="all").judge(half, ADD).reward
    assert (frac, every) == (pytest.approx(1 / 3), 0.0)


# ------------------------------------------------------------------------------------ running programs
def run(program: str, *, isolation: str = "bubblewrap", limits: Limits = LIMITS, checks=None):
    return Sandbox(limits, isolation=isolation).run(program + "\n" + GOOD, checks or [parse_check(t) for t in ADD.tests])


ISOLATIONS = [pytest.param("bubblewrap", marks=needs_bubblewrap), "none"]


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_correct_program_passes_and_values_of_every_plain_type_come_back(isolation):
    assert run("", isolation=isolation).passed == (True, True, True)
    program = "def same(x):\n    return x\n"
    checks = [Check(f"same({v!r})", "==", v) for v in PLAIN if v is not math.inf] + [Check("same(float('nan'))", "!=", 0.0)]
    outcome = Sandbox(LIMITS, isolation=isolation).run(program, checks)
    assert outcome.status == "ok" and all(outcome.passed)


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_an_infinite_loop_is_killed_and_scores_0(isolation):
    start = time.monotonic()
    outcome = run("while True:\n    pass", isolation=isolation)
    assert outcome.status in ("killed", "timeout") and not any(outcome.passed)
    assert time.monotonic() - start < LIMITS.timeout + 2  # CPU limit (SIGXCPU) or the wall clock, whichever first


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_sleeping_program_is_killed_at_the_wall_clock(isolation):
    start = time.monotonic()
    outcome = run("import time\ntime.sleep(60)", isolation=isolation, limits=Limits(timeout=1.0, cpu_seconds=1, memory_mb=256))
    assert outcome.status == "timeout" and not any(outcome.passed) and time.monotonic() - start < 3


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_huge_allocation_fails_inside_the_limit(isolation):
    outcome = run("x = bytearray(8 * 1024 ** 3)", isolation=isolation)  # 8 GiB against RLIMIT_AS = 256 MiB
    assert (outcome.status, outcome.detail) == ("load_error", "MemoryError") and not any(outcome.passed)


@needs_bubblewrap
def test_a_checks_failures_are_its_own_and_a_program_killed_half_way_keeps_what_it_passed():
    program = GOOD + "def boom():\n    raise KeyError\ndef die():\n    import os\n    os._exit(0)\n"
    checks = [Check("add(1, 2)", "==", 3), Check("boom()", "==", 1), Check("add(2, 2)", "==", 4), Check("die()", "==", 1),
              Check("add(3, 3)", "==", 6)]
    outcome = Sandbox(LIMITS).run(program, checks)
    assert outcome.passed == (True, False, True, False, False) and outcome.status == "ok"


def test_describe_names_the_isolation_in_force():
    text = Sandbox(LIMITS).describe()
    assert text.startswith("sandbox: bubblewrap (new user, PID, network, IPC, UTS and mount namespaces") and "10.0s wall" in text
    assert "the audit hook as a second layer" in text and "6 processes" in text
    assert Sandbox(LIMITS, isolation="none").describe().startswith("sandbox: NO isolation (task.isolation=none)")
    with pytest.raises(ValueError, match="isolation='docker'"):
        Sandbox(LIMITS, isolation="docker")


def test_without_bubblewrap_task_code_refuses_to_start_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    with pytest.raises(DynamoError) as refused:
        CodeTask(path=FIXTURE, seed=0, limits=LIMITS).default_verifier(timeout=1.0)
    message = str(refused.value)
    assert "\n" not in message and "bubblewrap is not installed" in message and "apt-get install bubblewrap" in message
    assert "task.isolation=none" in message
    with pytest.raises(SandboxError, match="bubblewrap is not installed"):
        Sandbox(LIMITS).check_works()
    # set on purpose, isolation=none runs (the start-up line says so)
    verifier = CodeTask(path=FIXTURE, seed=0, limits=LIMITS, isolation="none").default_verifier(timeout=1.0)
    assert verifier.note.startswith("sandbox: NO isolation")


@needs_bubblewrap
def test_a_bubblewrap_too_old_for_the_sandbox_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr("dynamo_cli.verify.sandbox.bubblewrap_options", lambda: frozenset({"--perms", "--info-fd"}))
    with pytest.raises(SandboxError, match="this bubblewrap has no --size, --userns-block-fd, --die-with-parent, --remount-ro"):
        Sandbox(LIMITS).check_works()


@needs_bubblewrap
def test_a_sandbox_that_cannot_start_is_the_sandboxs_fault_not_the_programs(monkeypatch):
    monkeypatch.setattr("dynamo_cli.verify.sandbox.interpreter_mounts", lambda: ("--ro-bind", "/no/such/dir", "/x"))
    with pytest.raises(SandboxError, match="bwrap: Can't find source path /no/such/dir"):
        Sandbox(LIMITS).run(GOOD, [Check("add(1, 2)", "==", 3)])


# ------------------------------------------------------------------------------------------- local files
@needs_bubblewrap
def test_mbpp_and_humaneval_files_load_and_their_solutions_pass(tmp_path):
    rows = [{"task_id": 7, "text": "Write a function to triple a number.", "code": "def triple(x):\n    return 3 * x",
             "test_list": ["assert triple(2) == 6", "assert triple(0) == 0"], "test_setup_code": "import math"},
            {"task_id": "HumanEval/0", "prompt": "def inc(x):\n    \"\"\"x plus one\"\"\"\n",
             "canonical_solution": "    return x + 1\n", "entry_point": "inc",
             "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n"},
            {"task_id": "HumanEval/1", "prompt": "def dec(x):\n", "canonical_solution": "    return x - 1\n", "entry_point": "dec",
             "test": "def check(candidate):\n    for x in range(3):\n        assert candidate(x) == x - 1\n"},  # a loop
            {"task_id": 8, "text": "Write is_odd(n).", "code": "def is_odd(n):\n    return n % 2 == 1",
             "test_list": ["assert is_odd(3)", "x = is_odd(2)\nassert not x"]},  # a statement: not a value check
            {"question": "neither format"}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = CodeTask(path=path, test_path=path, seed=0, limits=LIMITS)
    problems = task.test_problems()
    assert [p.id for p in problems] == ["mixed/7", "mixed/HumanEval/0"]
    assert (task.skipped, task.unjudged) == (2, 4)  # once per file read: neither format; a test that is no value check
    assert any("skipped 4 rows with a test that is not a value check" in note for note in task.skip_notes())
    mbpp, humaneval = problems
    assert humaneval.tests == ("assert inc(1) == 2", "assert inc(-1) == 0")  # one check per assert of check()
    assert task.prompt_text(mbpp) == "Write a function to triple a number.\nassert triple(2) == 6\n"
    assert task.prompt_text(humaneval) == humaneval.prefix  # the completion continues the signature
    verdicts = task.verifier([task.demonstration(p) for p in problems], problems).verdicts
    assert [v.reward for v in verdicts] == [1.0, 1.0]
    assert task.judge("    return x\n", humaneval).reward == 0.0  # 1 != 2, -1 != 0
    assert task.judge("    return 2 if x == 1 else 7\n", humaneval).reward == 0.5  # each assert is its own check


TINY = ["logger=none", "device=cpu", "model.hidden_size=64", "model.num_layers=2", "model.intermediate_size=128",
        "model.max_position_embeddings=512", "eval.n_samples=0", "eval.max_problems=2", "trainer.eval_every=0",
        "trainer.save_every=0", "trainer.prompts_per_step=4", "rollout.n=2", "trainer.steps=2", "task.max_new_tokens=48"]


@needs_bubblewrap
def test_train_task_code_runs_with_the_sandbox_on(tmp_path):
    from conftest import dynamo

    result = dynamo("train", f"hydra.run.dir={tmp_path}", "task=code", *TINY)
    assert "sandbox: bubblewrap (new user, PID, network" in result.stdout  # the start-up line names the isolation
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]
    assert len(steps) == 2
    for step in steps:
        assert step["rollout/extract_program_frac"] == 1.0 and step["rollout/reward_errors"] == 0
        outcomes = sum(step[f"rollout/sandbox_{s}"] for s in ("timeout", "killed", "load_error", "crashed"))
        assert outcomes <= step["rollout/count"] == 8  # random programs mostly fail to load: every one was run
    assert Path(tmp_path / "config.yaml").read_text().count("isolation: bubblewrap") == 1
