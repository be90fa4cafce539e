"""Run an untrusted program and its tests in a separate, limited process (task=code's verifier).

Each run gets a fresh process (verify/sandbox_child.py under `python -I -S`: no site-packages, no PYTHON* variables, an
empty environment) in its own session, a throw-away working dir (deleted after), and these layers:

    kernel-enforced   wall clock (the whole process group SIGKILLed at `timeout`), RLIMIT_CPU, RLIMIT_AS (memory),
                      RLIMIT_FSIZE (file size), RLIMIT_NOFILE; when dynamo runs as root: the program runs as `nobody`
                      (so RLIMIT_NPROC bounds its processes: root ignores that limit, and file permissions keep it
                      out of root's files) inside a fresh network namespace (`unshare --net`: no interface but a
                      down loopback), both checked at start and reported by `describe()`
    Python-level      an audit hook (PEP 578), installed before the program runs and not removable from Python:
                      no sockets, no fork/exec/subprocess, no ctypes, no writes outside the work dir, no reads
                      outside it and the standard library (the task's data file and its answers are elsewhere)

What does not hold: native code (an extension module the program managed to load) bypasses the audit hook, and
without root there is no `nobody` and no network namespace, so only the audit hook stops sockets and forks. This is
a guard against accidents and reward hacking by a policy, not a security boundary against a determined attacker:
for that, run dynamo in a container (gVisor, nsjail, firejail).

A test `assert <expr> == <literal>` is a value check: the child sends repr(<expr>) (plain builtin values only, so no
object with a rigged __eq__ passes) and the parent compares it with the literal, which the child never sees: a
program cannot claim a pass it did not earn by writing to the results file or exiting early. Other test forms run
as statements in the child, which a hostile program could forge.
"""
from __future__ import annotations

import ast
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

CHILD = str(Path(__file__).with_name("sandbox_child.py"))
MAX_RESULTS_BYTES = 1 << 20  # results.txt read back at most this much
POLL_SECONDS = 0.005


@dataclass(frozen=True)
class Limits:
    timeout: float = 5.0  # wall-clock seconds per program, then its process group is SIGKILLed
    cpu_seconds: int = 2  # RLIMIT_CPU
    memory_mb: int = 512  # RLIMIT_AS: address space
    max_processes: int = 8  # RLIMIT_NPROC of `nobody` (as root); the audit hook forbids forking anyway
    file_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write


@dataclass(frozen=True)
class Check:
    """One test. kind "value": the child evaluates `code`, the parent compares with `expected`; "assert": the child
    runs the statement `code`."""

    kind: str
    code: str
    expected: Any = None


def parse_check(test: str) -> Check:
    """`assert f(2) == 4` -> Check("value", "f(2)", 4); any other test -> Check("assert", test)."""
    try:
        tree = ast.parse(test.strip())
    except SyntaxError:
        return Check("assert", test)
    if len(tree.body) == 1 and isinstance(node := tree.body[0], ast.Assert) and isinstance(cmp := node.test, ast.Compare) \
            and len(cmp.ops) == 1 and isinstance(cmp.ops[0], ast.Eq):
        try:
            expected = ast.literal_eval(cmp.comparators[0])
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return Check("assert", test)
        return Check("value", ast.unparse(cmp.left), expected)
    return Check("assert", test)


@dataclass(frozen=True)
class Outcome:
    status: str  # ok | load_error (the program raised) | timeout (wall clock) | killed (a signal: CPU, memory) | crashed
    passed: tuple[bool, ...]  # per check
    detail: str = ""  # the load error's type, the signal, ...


def compare(reported: str, expected: Any) -> bool:
    """The child's repr of a plain value against the expected literal (Python ==, as the assert would)."""
    try:
        return bool(ast.literal_eval(reported) == expected)
    except Exception:  # garbled, too deep, or a value with no literal form (nan, set()): not a pass
        return False


def read_results(text: str, checks: list[Check]) -> tuple[list[bool], str | None]:
    """(passed per check, the program's load error or None). The last line for a check wins: the child's own report
    comes after anything the program wrote ahead of it."""
    passed, load_error = [False] * len(checks), None
    for line in text.splitlines():
        try:
            row = json.loads(line)
            index, kind = row[0], row[1]
        except (ValueError, IndexError, TypeError, KeyError):
            continue
        if index == "load":
            load_error = str(kind)
        elif isinstance(index, int) and 0 <= index < len(checks):
            check = checks[index]
            passed[index] = (kind == "value" and check.kind == "value" and compare(row[2], check.expected)) or (
                kind == "pass" and check.kind == "assert")
    return passed, load_error


@lru_cache(maxsize=1)
def network_namespace_available() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "--net", "--", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Sandbox:
    def __init__(self, limits: Limits, *, guard: bool = True, network_namespace: bool | None = None):
        """guard: the audit hook (off only in tests that prove the kernel layers alone). network_namespace: None =
        use one when available."""
        self.limits, self.guard = limits, guard
        self.root = os.geteuid() == 0
        nobody = pwd.getpwnam("nobody") if self.root else None
        self.uid, self.gid = (nobody.pw_uid, nobody.pw_gid) if nobody else (os.getuid(), os.getgid())
        self.netns = network_namespace_available() if network_namespace is None else network_namespace

    def describe(self) -> str:
        limits = self.limits
        return (f"sandbox: a process per program, {limits.timeout}s wall, {limits.cpu_seconds}s CPU, {limits.memory_mb} MB "
                f"memory, {limits.file_mb} MB files; "
                + (f"as nobody with at most {limits.max_processes} processes" if self.root else "as this user (not root: no "
                   "uid drop, no process limit)")
                + ("; a private network namespace" if self.netns else "; no network namespace")
                + ("; the audit hook" if self.guard else "; NO audit hook"))

    def run(self, program: str, checks: list[Check]) -> Outcome:
        work = tempfile.mkdtemp(prefix="dynamo-sandbox-")
        try:
            if self.root:
                os.chown(work, self.uid, self.gid)
            return self._run(work, program, checks)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _run(self, work: str, program: str, checks: list[Check]) -> Outcome:
        job = json.dumps({"program": program, "checks": [{"kind": c.kind, "code": c.code} for c in checks],
                          "guard": self.guard, "uid": self.uid, "gid": self.gid, **asdict(self.limits)})
        argv = (["unshare", "--net", "--"] if self.netns else []) + [sys.executable, "-I", "-S", CHILD]
        proc = subprocess.Popen(argv, cwd=work, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, env={"PATH": "/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8"})
        try:
            proc.stdin.write(job.encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        timed_out = not self._wait_unreaped(proc.pid, self.limits.timeout)
        try:  # the child (a zombie at worst, so its group id is still taken) and anything it left running
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        code = proc.wait()
        try:
            with open(os.path.join(work, "results.txt"), "rb") as f:
                text = f.read(MAX_RESULTS_BYTES).decode("utf-8", "replace")
        except OSError:
            text = ""
        passed, load_error = read_results(text, checks)
        if timed_out:
            status, detail = "timeout", f"killed after {self.limits.timeout}s"
        elif load_error is not None:
            status, detail = "load_error", load_error
        elif code < 0:
            status, detail = "killed", signal.Signals(-code).name
        elif code != 0:
            status, detail = "crashed", f"exit code {code}"
        else:
            status, detail = "ok", ""
        return Outcome(status, tuple(passed), detail)

    @staticmethod
    def _wait_unreaped(pid: int, timeout: float) -> bool:
        """Wait for the child to exit without reaping it (its pid and group id stay reserved for the killpg). False on
        timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
            time.sleep(POLL_SECONDS)
        return False
