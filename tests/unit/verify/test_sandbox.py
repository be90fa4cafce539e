"""task=code's sandbox: hostile programs are contained and score 0, the run goes on; the tests' maths by hand."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import FIXTURES

from dynamo_cli.tasks.code import CodeProblem, CodeTask, code_reward, program_of
from dynamo_cli.verify.sandbox import Check, Limits, Sandbox, network_namespace_available, parse_check, read_results

FIXTURE = FIXTURES / "code_problems.jsonl"
LIMITS = Limits(timeout=10.0, cpu_seconds=1, memory_mb=256, max_processes=6)  # a generous wall clock: this machine is shared
ROOT = os.geteuid() == 0
ADD = CodeProblem("code/add", "Write add(a, b).", "def add(a, b):\n    return a + b", "L1",
                  tests=("assert add(1, 2) == 3", "assert add(-4, 4) == 0", "assert add(10, 32) == 42"))
GOOD = "def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def task():
    return CodeTask(path=FIXTURE, seed=0, limits=LIMITS, workers=2)


# ------------------------------------------------------------------------------------------- pure parts
def test_parse_check_splits_value_asserts_from_statements():
    assert parse_check("assert add(1, 2) == 3") == Check("value", "add(1, 2)", 3)
    assert parse_check("assert f('a') == {'a': [1, 2]}") == Check("value", "f('a')", {"a": [1, 2]})
    # not `<expr> == <literal>`: run as a statement in the child
    assert parse_check("assert set(f(1)) == set([1])").kind == "assert"
    assert parse_check("assert f(1) != 2").kind == "assert"
    assert parse_check("assert f(1)").kind == "assert"


def test_read_results_compares_values_in_the_parent_and_the_last_report_wins():
    checks = [Check("value", "f(1)", 3), Check("value", "f(2)", [1, 2]), Check("assert", "assert g()"), Check("value", "f(3)", 1)]
    text = "\n".join(['[0, "value", "3"]', '[1, "value", "[1, 3]"]', '[2, "pass", null]',
                      '[3, "pass", null]',  # a "pass" for a value check is never one: only the value decides
                      '[0, "value", "4"]',  # ... and the later report for a check wins
                      'garbage', '[9, "value", "1"]'])
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
    humaneval = CodeProblem("h/0", "def f(x):\n", "    return x\n", "all", tests=("check(f)",), prefix="def f(x):\n")
    assert program_of("    return x\n", humaneval) == "def f(x):\n    return x\n"


# ---------------------------------------------------------------------------------------- the fixture
def test_every_fixture_solution_passes_and_a_wrong_one_does_not(task):
    problems = task.train_problems() + task.test_problems()
    assert 20 <= len(problems) <= 40 and task.skipped == 0
    verification = task.verifier([task.demonstration(p) for p in problems], problems)
    assert [v.reward for v in verification.verdicts] == [1.0] * len(problems)
    wrong = task.verifier(["def add(a, b):\n    return a + b if a > 0 else 1\n"], [ADD]).verdicts[0]
    assert wrong.reward == pytest.approx(2 / 3) and wrong.rule == "program"  # 3 ✓, 1 ≠ 0 ✗, 42 ✓
    assert wrong.extracted == "2/3 tests"


def test_reward_mode_all_needs_every_test(task):
    half = "def add(a, b):\n    return 3 if a == 1 else a * b\n"  # 3 ✓, -16 ✗, 320 ✗
    frac = CodeTask(path=FIXTURE, seed=0, limits=LIMITS, reward_mode="fraction").judge(half, ADD).reward
    every = CodeTask(path=FIXTURE, seed=0, limits=LIMITS, reward_mode="all").judge(half, ADD).reward
    assert (frac, every) == (pytest.approx(1 / 3), 0.0)


# ------------------------------------------------------------------------------------------ containment
def run(program: str, *, guard: bool = True, limits: Limits = LIMITS, checks=None):
    return Sandbox(limits, guard=guard).run(program + "\n" + GOOD, checks or [parse_check(t) for t in ADD.tests])


def test_a_correct_program_passes_in_the_sandbox():
    assert run("").passed == (True, True, True)


def test_an_infinite_loop_is_killed_and_scores_0():
    start = time.monotonic()
    outcome = run("while True:\n    pass")
    assert outcome.status in ("killed", "timeout") and not any(outcome.passed)
    assert time.monotonic() - start < LIMITS.timeout + 2  # CPU limit (SIGXCPU) or the wall clock, whichever first


def test_a_sleeping_program_is_killed_at_the_wall_clock_with_its_children():
    outcome = run("import time\ntime.sleep(60)", limits=Limits(timeout=1.0, cpu_seconds=1, memory_mb=256))
    assert outcome.status == "timeout" and not any(outcome.passed)


def test_a_huge_allocation_fails_inside_the_limit():
    outcome = run("x = bytearray(8 * 1024 ** 3)")  # 8 GiB against RLIMIT_AS = 256 MiB
    assert (outcome.status, outcome.detail) == ("load_error", "MemoryError") and not any(outcome.passed)


def test_a_fork_bomb_is_refused():
    outcome = run("import os\nwhile True:\n    os.fork()")
    assert (outcome.status, outcome.detail) == ("load_error", "PermissionError") and not any(outcome.passed)


@pytest.mark.skipif(not ROOT, reason="RLIMIT_NPROC binds only the `nobody` a root dynamo drops to")
def test_without_the_audit_hook_rlimit_nproc_still_bounds_forks():
    # A bounded bomb (at most 40 children, each sleeping), so that this shared machine survives even if the limit
    # failed; the process group kill removes the children afterwards.
    bomb = ("import os, time\nmade = 0\nfor _ in range(40):\n    try:\n        pid = os.fork()\n    except OSError:\n"
            "        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    made += 1\n")
    outcome = Sandbox(LIMITS, guard=False).run(bomb, [Check("value", f"0 < made < {LIMITS.max_processes}", True)])
    assert outcome.passed == (True,)  # it forked (no audit hook), and the kernel stopped it below the limit
    for _ in range(20):  # every child was killed with its group (the kernel may take a moment to tear them down)
        leftover = subprocess.run(["pgrep", "-u", "nobody", "-f", "sandbox_child"], capture_output=True, text=True).stdout
        if not leftover:
            break
        time.sleep(0.1)
    assert leftover == ""


def test_writing_outside_the_work_dir_is_refused(tmp_path):
    target = tmp_path / "open" / "escaped.txt"
    target.parent.mkdir()
    target.parent.chmod(0o777)  # writable by anyone: only the audit hook stands in the way
    outcome = run(f"open({str(target)!r}, 'w').write('x')")
    assert (outcome.status, outcome.detail) == ("load_error", "PermissionError") and not target.exists()
    inside = run("open('scratch.txt', 'w').write('x')\nimport os\nos.remove('scratch.txt')")
    assert inside.passed == (True, True, True)  # the throw-away work dir is the program's to use


@pytest.mark.skipif(not ROOT, reason="the uid drop to nobody needs root")
def test_without_the_audit_hook_file_permissions_still_keep_root_files(tmp_path):
    target = tmp_path / "escaped.txt"  # tmp_path: root's, mode 0700
    outcome = run(f"open({str(target)!r}, 'w').write('x')", guard=False)
    assert outcome.status == "load_error" and not target.exists()


def test_reading_the_task_data_is_refused():
    outcome = run(f"answers = open({str(FIXTURE)!r}).read()")  # where the expected values live
    assert (outcome.status, outcome.detail) == ("load_error", "PermissionError")


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted = []

    def accept():
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and not accepted:
            try:
                accepted.append(server.accept()[0])
            except (socket.timeout, OSError):
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted, thread
    server.close()


def test_a_socket_connect_is_refused(listener):
    port, accepted, thread = listener
    outcome = run(f"import socket\nsocket.socket().connect(('127.0.0.1', {port}))")
    thread.join()
    assert (outcome.status, outcome.detail) == ("load_error", "PermissionError") and not accepted


@pytest.mark.skipif(not network_namespace_available(), reason="no network namespace here (unshare --net needs root)")
def test_without_the_audit_hook_the_network_namespace_still_cuts_the_network(listener):
    port, accepted, thread = listener
    outcome = run(f"import socket\nsocket.socket().connect(('127.0.0.1', {port}))", guard=False)
    thread.join()
    assert outcome.status == "load_error" and not accepted  # its own loopback is down: nothing reaches ours


def test_a_rigged_eq_an_early_exit_and_forged_results_do_not_pass():
    rigged = "class A:\n    def __eq__(self, other):\n        return True\n" + "def add(a, b):\n    return A()\n"
    assert not any(Sandbox(LIMITS).run(rigged, [parse_check(t) for t in ADD.tests]).passed)
    assert not any(run("import os\nos._exit(0)").passed)  # exits before any check: nothing reported, nothing passed
    forged = ("import json\nwith open('results.txt', 'a') as f:\n    for i in range(3):\n"
              "        f.write(json.dumps([i, 'value', '42']) + '\\n')\nimport os\nos._exit(0)")
    assert run(forged).passed == (False, False, True)  # only the guess 42 that is add(10, 32): it had to know it


def test_hostile_completions_score_0_in_a_batch_and_the_run_goes_on(task):
    hostile = ["while True:\n    pass", "import os\nwhile True:\n    os.fork()", "x = bytearray(8 * 1024 ** 3)",
               "open('/tmp/dynamo-escape.txt', 'w').write('x')", "import socket\nsocket.socket().connect(('1.1.1.1', 80))",
               "def add(a, b):\n    return a + b\n"]
    verification = task.verifier(hostile, [ADD] * len(hostile))
    assert [v.reward for v in verification.verdicts] == [0.0] * 5 + [1.0]
    metrics = verification.metrics()
    assert metrics["rollout/reward_errors"] == 0 and metrics["rollout/sandbox_load_error"] == 4
    assert metrics["rollout/sandbox_killed"] + metrics["rollout/sandbox_timeout"] == 1
    assert not Path("/tmp/dynamo-escape.txt").exists()


def test_describe_names_the_layers_that_hold():
    text = Sandbox(LIMITS).describe()
    assert "the audit hook" in text and "10.0s wall" in text
    if ROOT:
        assert f"as nobody with at most {LIMITS.max_processes} processes" in text
    assert ("a private network namespace" in text) == network_namespace_available()


# ------------------------------------------------------------------------------------------- local files
def test_mbpp_and_humaneval_files_load_and_their_solutions_pass(tmp_path):
    rows = [{"task_id": 7, "text": "Write a function to triple a number.", "code": "def triple(x):\n    return 3 * x",
             "test_list": ["assert triple(2) == 6", "assert triple(0) == 0"], "test_setup_code": "import math"},
            {"task_id": "HumanEval/0", "prompt": "def inc(x):\n    \"\"\"x plus one\"\"\"\n",
             "canonical_solution": "    return x + 1\n", "entry_point": "inc",
             "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n"},
            {"question": "neither format"}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = CodeTask(path=path, test_path=path, seed=0, limits=LIMITS)
    problems = task.test_problems()
    assert [p.id for p in problems] == ["mixed/7", "mixed/HumanEval/0"] and task.skipped == 2  # once per file read
    mbpp, humaneval = problems
    assert task.prompt_text(mbpp) == "Write a function to triple a number.\nassert triple(2) == 6\n"
    assert task.prompt_text(humaneval) == humaneval.prefix  # the completion continues the signature
    verdicts = task.verifier([task.demonstration(p) for p in problems], problems).verdicts
    assert [v.reward for v in verdicts] == [1.0, 1.0]
    assert task.judge("    return x\n", humaneval).reward == 0.0  # check() fails as a whole


TINY = ["logger=none", "device=cpu", "model.hidden_size=64", "model.num_layers=2", "model.intermediate_size=128",
        "model.max_position_embeddings=512", "eval.n_samples=0", "eval.max_problems=2", "trainer.eval_every=0",
        "trainer.save_every=0", "trainer.prompts_per_step=4", "rollout.n=2", "trainer.steps=2", "task.max_new_tokens=48"]


def test_train_task_code_runs_with_the_sandbox_on(tmp_path):
    from conftest import dynamo

    dynamo("train", f"hydra.run.dir={tmp_path}", "task=code", *TINY)
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]
    assert len(steps) == 2
    for step in steps:
        assert step["rollout/extract_program_frac"] == 1.0 and step["rollout/reward_errors"] == 0
        outcomes = sum(step[f"rollout/sandbox_{s}"] for s in ("timeout", "killed", "load_error", "crashed"))
        assert outcomes <= step["rollout/count"] == 8  # random programs mostly fail to load: every one was run
