"""Run an untrusted program and its tests in a separate, isolated process (task=code's verifier).

An RL policy searches for whatever scores, so a program may do anything Python can. Each run is one process
(verify/sandbox_child.py under `python -I -S`: no site-packages, an empty environment) with these layers:

    kernel (task.isolation=bubblewrap, the default)
                      bubblewrap puts the process in new user, PID, network, IPC, UTS, cgroup and mount namespaces. It
                      sees the interpreter, its standard library and the system's shared libraries read-only (site-
                      packages hidden, ctypes and the C-API test modules replaced by /dev/null), a fresh /proc of its
                      own PID namespace, a minimal read-only /dev, and a private tmpfs work dir of task.file_mb; no
                      home, no data files, no host /proc, no network but its own loopback, no environment. It runs as
                      uid 65534 mapped to a host uid other than root (so RLIMIT_NPROC binds: the kernel exempts
                      root), under RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE and RLIMIT_NPROC. The whole PID
                      namespace dies with bubblewrap, which dies with this process or at the wall clock.
    the verdict       every test is a value check (`parse_check`): the child sends back each value as tagged JSON
                      built of exact builtin types, through a pipe whose read end only this process holds, and this
                      process compares it with the expected value, which the child never sees. Reading is
                      non-blocking against the wall clock and capped in bytes: nothing the program does to the pipe,
                      its files, its exit code or itself can hang or crash the caller or earn a check it did not pass.
    Python-level      an audit hook (PEP 578) refuses sockets, forks, ctypes and file access outside the work dir:
                      a second layer only. Python code can remove it, so nothing relies on it.

task.isolation=none keeps the rlimits, the verdict and the audit hook but no namespaces: the program runs as the user
that runs dynamo, with that user's files and network. docs/robustness.md says what the sandbox holds against and what
it does not.
"""
from __future__ import annotations

import ast
import json
import math
import operator
import os
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

CHILD_SOURCE = Path(__file__).with_name("sandbox_child.py").read_text()
ISOLATIONS = ("bubblewrap", "none")
INSTALL_BUBBLEWRAP = "apt-get install bubblewrap (dnf/yum/pacman: bubblewrap)"
SANDBOX_UID = 65534  # the uid programs run as inside the user namespace (the child's SANDBOX_UID)
WORK_DIR = "/tmp"  # the program's tmpfs work dir inside bubblewrap (tempfile finds it)
MAX_RESULTS_BYTES = 1 << 20  # read from the results pipe at most; past it the program is killed
MAX_STDERR_BYTES = 4096  # of bubblewrap's and the child's own messages, kept for a sandbox error's line
MAX_DEPTH = 50  # nesting of a reported value (the child's MAX_DEPTH)
# Extension modules that hand Python code native access (any syscall, other interpreters without the audit hook):
# bound to /dev/null inside bubblewrap, so importing them fails.
HIDDEN_MODULES = ("_ctypes", "_testcapi", "_testinternalcapi", "_xxsubinterpreters", "_xxinterpchannels", "_testmultiphase",
                  "_testsinglephase", "_testimportmultiple", "_testbuffer", "_testclinic")


class SandboxError(RuntimeError):
    """The sandbox itself could not run a program (bubblewrap missing or refused, no process): not the program's fault."""


@dataclass(frozen=True)
class Limits:
    timeout: float = 5.0  # wall-clock seconds per program, then everything it started is SIGKILLed
    cpu_seconds: int = 2  # RLIMIT_CPU
    memory_mb: int = 512  # RLIMIT_AS: address space
    max_processes: int = 8  # RLIMIT_NPROC inside the sandbox's user namespace (its threads count too)
    file_mb: int = 16  # RLIMIT_FSIZE, and the size of bubblewrap's tmpfs work dir


# ----------------------------------------------------------------------------------- tests as value checks
COMPARISONS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
               ">=": operator.ge, "in": lambda v, e: v in e, "not in": lambda v, e: v not in e,
               "contains": lambda v, e: e in v, "not contains": lambda v, e: e not in v, "is": operator.is_,
               "is not": operator.is_not}
_SYMBOLS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.In: "in",
            ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}
_MIRRORED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<=", "in": "contains",
             "not in": "not contains", "is": "is", "is not": "is not"}  # `literal OP value` as `value OP' literal`
_SAFE_CALLS = {"set": set, "frozenset": frozenset, "tuple": tuple, "list": list, "dict": dict, "sorted": sorted,
               "float": float}  # what an expected value may be built with: builtins over literals
NOT_LITERAL = object()  # what `literal` returns for an expression that is not one


@dataclass(frozen=True)
class Check:
    """One test as a value check: the child evaluates `code` and sends the value back; the parent decides `op` against
    `expected` (which the child never sees). op: a comparison (COMPARISONS), truthy, falsy, abs< / abs<= (|value -
    expected| below abs_tol) or isclose (math.isclose with rel_tol and abs_tol)."""

    code: str
    op: str = "=="
    expected: Any = True
    rel_tol: float = 0.0
    abs_tol: float = 0.0


def literal(node: ast.AST) -> Any:
    """The value of an expected-value expression: Python literals, +/- on numbers, and set/frozenset/tuple/list/dict/
    sorted/float over literals (MBPP writes `set((4, 5))`, `float('inf')`). NOT_LITERAL for anything else: nothing here runs
    code from the data file beyond these builtins."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [literal(e) for e in node.elts]
        if any(item is NOT_LITERAL for item in items):
            return NOT_LITERAL
        try:
            return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
        except TypeError:  # an unhashable item of a set
            return NOT_LITERAL
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):  # {**x}
            return NOT_LITERAL
        keys, values = [literal(k) for k in node.keys], [literal(v) for v in node.values]
        if any(x is NOT_LITERAL for x in (*keys, *values)):
            return NOT_LITERAL
        try:
            return dict(zip(keys, values, strict=True))
        except TypeError:
            return NOT_LITERAL
    number = (int, float, complex)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = literal(node.operand)
        if type(value) in number:
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):  # 1 + 2j, 0.1 + 0.2
        left, right = literal(node.left), literal(node.right)
        if type(left) in number and type(right) in number:
            return left + right if isinstance(node.op, ast.Add) else left - right
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SAFE_CALLS \
            and not node.keywords and len(node.args) <= 1:
        args = [literal(a) for a in node.args]
        if any(a is NOT_LITERAL for a in args):
            return NOT_LITERAL
        try:
            return _SAFE_CALLS[node.func.id](*args)
        except (TypeError, ValueError):
            return NOT_LITERAL
    return NOT_LITERAL


def _is_literal(node: ast.AST) -> bool:
    return literal(node) is not NOT_LITERAL


def _named(func: ast.AST, *names: str) -> bool:
    """`func` is one of `names`, bare or as an attribute (`abs`, `math.fabs`, `isclose`, `math.isclose`)."""
    return (isinstance(func, ast.Name) and func.id in names) or (isinstance(func, ast.Attribute) and func.attr in names)


def _difference(node: ast.AST) -> tuple[str, Any] | None:
    """`abs(E - L)` or `abs(L - E)` (or math.fabs) with L a number -> (E's code, L)."""
    if not (isinstance(node, ast.Call) and _named(node.func, "abs", "fabs") and len(node.args) == 1 and not node.keywords):
        return None
    inner = node.args[0]
    if not (isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.Sub)):
        return None
    for value, other in ((inner.left, inner.right), (inner.right, inner.left)):
        target = literal(other)
        if type(target) in (int, float) and not _is_literal(value):
            return ast.unparse(value), target
    return None


def _value_check(test: ast.expr) -> Check | None:
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return None if _is_literal(test.operand) else Check(ast.unparse(test.operand), "falsy", None)
    if isinstance(test, ast.Compare):
        if len(test.ops) != 1:
            return None
        left, op, right = test.left, _SYMBOLS.get(type(test.ops[0])), test.comparators[0]
        tolerance = literal(right)
        if op in ("<", "<=") and type(tolerance) in (int, float) and (difference := _difference(left)):
            return Check(difference[0], f"abs{op}", difference[1], abs_tol=float(tolerance))
        expected_right, expected_left = literal(right), literal(left)
        if expected_right is not NOT_LITERAL and expected_left is NOT_LITERAL:
            code, expected = ast.unparse(left), expected_right
        elif expected_left is not NOT_LITERAL and expected_right is NOT_LITERAL:
            code, expected, op = ast.unparse(right), expected_left, _MIRRORED[op]
        else:
            return None
        if op in ("is", "is not") and not any(expected is s for s in (True, False, None)):
            return None  # identity is defined for the singletons only: `x is 5` depends on the interpreter
        return Check(code, op, expected)
    if isinstance(test, ast.Call) and _named(test.func, "isclose") and len(test.args) == 2:
        tolerances = {"rel_tol": 1e-9, "abs_tol": 0.0}  # math.isclose's defaults
        for keyword in test.keywords:
            value = literal(keyword.value)
            if keyword.arg not in tolerances or type(value) not in (int, float):
                return None
            tolerances[keyword.arg] = float(value)
        a, b = test.args
        for value, other in ((a, b), (b, a)):
            target = literal(other)
            if type(target) in (int, float) and not _is_literal(value):
                return Check(ast.unparse(value), "isclose", target, **tolerances)
        return None
    if _is_literal(test):
        return None  # `assert True` checks nothing
    return Check(ast.unparse(test), "truthy", None)


def parse_check(test: str) -> Check | None:
    """A test statement as a value check, or None when it is not one (then it cannot be judged outside the program's
    process, and its row is skipped). `assert f(2) == 4` -> Check("f(2)", "==", 4); also `assert 4 == f(2)`, `!=`,
    `<`.., `in`, `is True/False/None`, `assert f(x)`, `assert not f(x)`, `assert abs(f(x) - y) < eps`,
    `assert math.isclose(f(x), y, rel_tol=..)`, an expected value built as literal_eval allows or with set(), tuple(),
    ... over literals; an assert's message is ignored."""
    try:
        tree = ast.parse(test.strip())
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    if len(tree.body) != 1 or not isinstance(node := tree.body[0], ast.Assert):
        return None
    return _value_check(node.test)


def holds(check: Check, value: Any) -> bool:
    """Whether a value the child reported (rebuilt by `decode`: plain builtin values only) passes the check."""
    try:
        if check.op == "truthy":
            return bool(value)
        if check.op == "falsy":
            return not value
        if check.op == "isclose":
            return math.isclose(value, check.expected, rel_tol=check.rel_tol, abs_tol=check.abs_tol)
        if check.op in ("abs<", "abs<="):
            gap = abs(value - check.expected)
            return bool(gap < check.abs_tol if check.op == "abs<" else gap <= check.abs_tol)
        return bool(COMPARISONS[check.op](value, check.expected))
    except Exception:  # a value of the wrong type (a list minus a number, a str in a number): not a pass
        return False


# ---------------------------------------------------------------------------------- what crosses the pipe
_SEQUENCES = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


def decode(obj: Any, depth: int = 0) -> Any:
    """The child's tagged JSON back as a plain value: {"tuple": [1, {"bytes": "61"}]} -> (1, b"a"). ValueError for
    anything else (a program can write any line into the pipe)."""
    if depth > MAX_DEPTH:
        raise ValueError("nested too deep")
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    if type(obj) is dict and len(obj) == 1:
        ((tag, items),) = obj.items()
        if tag in _SEQUENCES and type(items) is list:
            return _SEQUENCES[tag](decode(v, depth + 1) for v in items)
        if tag == "dict" and type(items) is list and all(type(p) is list and len(p) == 2 for p in items):
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in items}
        if tag == "bytes" and type(items) is str:
            return bytes.fromhex(items)
        if tag == "complex" and type(items) is list and len(items) == 2 and all(type(x) in (int, float) for x in items):
            return complex(*items)
    raise ValueError("not a tagged plain value")


def read_results(text: str, checks: list[Check]) -> tuple[list[bool], str | None]:
    """(passed per check, the program's load error or None) from the lines of the results pipe. A line is
    `[i, "value", <tagged value>]`, `[i, "fail", <why>]` or `["load", <error>]`; the last line for a check wins
    (the child's report comes after anything the program wrote ahead of it). Anything else is ignored."""
    passed, load_error = [False] * len(checks), None
    for line in text.splitlines():
        try:
            row = json.loads(line)
            index, kind = row[0], row[1]
        except (ValueError, IndexError, TypeError, KeyError, RecursionError):
            continue
        if index == "load":
            load_error = str(kind)[:200]
        elif type(index) is int and 0 <= index < len(checks):
            try:
                passed[index] = kind == "value" and len(row) == 3 and holds(checks[index], decode(row[2]))
            except (ValueError, TypeError, RecursionError):  # not a plain value, or unhashable items in a set
                passed[index] = False
    return passed, load_error


@dataclass(frozen=True)
class Outcome:
    status: str  # ok | load_error (the program raised) | timeout (wall clock) | killed (a signal: CPU, memory; a flood) | crashed
    passed: tuple[bool, ...]  # per check
    detail: str = ""  # the load error's type, the signal, ...


# ------------------------------------------------------------------------------------------- bubblewrap
def interpreter() -> str:
    """The real interpreter behind this one (a venv's python is a link to it, or a copy that needs its pyvenv.cfg)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


@lru_cache(maxsize=1)
def interpreter_mounts() -> tuple[str, ...]:
    """bwrap arguments that show the sandbox the interpreter, its standard library and the system's shared libraries,
    read-only, and no other host file: site-packages hidden under empty read-only tmpfs, HIDDEN_MODULES bound to
    /dev/null."""
    links, binds = [], []
    for top in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32"):  # libc, libm, libssl, libffi, ...
        if os.path.islink(top):
            links.append(top)
        elif os.path.isdir(top):
            binds.append(top)
    if os.path.isfile("/etc/ld.so.cache"):
        binds.append("/etc/ld.so.cache")
    base = os.path.realpath(sys.base_prefix)
    paths = sysconfig.get_paths(vars={"base": base, "platbase": base, "installed_base": base, "installed_platbase": base})
    stdlib = [os.path.realpath(paths["stdlib"]), os.path.realpath(paths["platstdlib"])]
    # a prefix of its own (pyenv, conda, a build): all of it; the system's (/usr): the standard library and the binary
    trees = [base] if base not in ("/", "/usr", "/usr/local") else sorted(set(stdlib))
    exe = interpreter()
    libdir = os.path.realpath(sysconfig.get_config_var("LIBDIR") or base)
    for extra in (exe, libdir if sysconfig.get_config_var("Py_ENABLE_SHARED") else None):
        if extra and not any(extra == t or extra.startswith(t + os.sep) for t in (*trees, *binds)):
            trees.append(extra)
    binds += trees
    args: list[str] = []
    # every directory on the way, readable by all: bubblewrap would create them 0700 (root's), and a program that
    # dropped to 65534 could then open the libraries the interpreter had mapped but exec nothing
    for parent in sorted({str(p) for path in (*binds, *links) for p in Path(path).parents if str(p) != "/"}):
        args += ["--perms", "0755", "--dir", parent]
    for path in binds:
        args += ["--ro-bind", path, path]
    for link in links:
        args += ["--symlink", os.readlink(link), link]
    minor = f"python3.{sys.version_info.minor}"
    for hidden in sorted({os.path.realpath(paths["purelib"]), os.path.realpath(paths["platlib"]),
                          "/usr/lib/python3/dist-packages", f"/usr/lib/{minor}/dist-packages", f"/usr/lib/{minor}/site-packages"}):
        if os.path.isdir(hidden):
            args += ["--tmpfs", hidden, "--remount-ro", hidden]
    dynload = os.path.join(stdlib[1], "lib-dynload")
    if os.path.isdir(dynload):
        for name in sorted(os.listdir(dynload)):
            if name.split(".")[0] in HIDDEN_MODULES:
                args += ["--ro-bind", "/dev/null", os.path.join(dynload, name)]
    return tuple(args)


@lru_cache(maxsize=1)
def bubblewrap_options() -> frozenset[str]:
    """The options this machine's bwrap knows (`bwrap --help`): older releases lack some."""
    try:
        shown = subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(word for word in (shown.stdout + shown.stderr).split() if word.startswith("--"))


NEEDED_OPTIONS = ("--size", "--perms", "--info-fd", "--userns-block-fd", "--die-with-parent", "--remount-ro")


def _read_json_object(fd: int, deadline: float) -> dict | None:
    """bubblewrap's --info-fd document (it arrives in pieces); None at EOF or the deadline."""
    data = b""
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        data += chunk
        try:
            return json.loads(data)
        except ValueError:
            continue
    return None


class Sandbox:
    def __init__(self, limits: Limits, *, isolation: str = "bubblewrap", guard: bool = True):
        """isolation: bubblewrap (kernel namespaces) or none (rlimits and the audit hook only). guard: the audit hook
        (the attack tests turn it off to show that the kernel layers hold alone)."""
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation={isolation!r}; expected one of {ISOLATIONS}")
        self.limits, self.isolation, self.guard = limits, isolation, guard
        self.root = os.geteuid() == 0

    def describe(self) -> str:
        limits = self.limits
        bounds = (f"{limits.timeout}s wall, {limits.cpu_seconds}s CPU, {limits.memory_mb} MB memory, {limits.file_mb} MB "
                  f"files, {limits.max_processes} processes")
        if self.isolation == "none":
            return (f"sandbox: NO isolation (task.isolation=none): programs run as this user, with its files and "
                    f"network; {bounds}" + ("; the audit hook" if self.guard else "; no audit hook"))
        return (f"sandbox: bubblewrap (new user, PID, network, IPC, UTS and mount namespaces; the interpreter read-only, "
                f"a private tmpfs work dir, programs as uid {SANDBOX_UID}); {bounds}"
                + ("; the audit hook as a second layer" if self.guard else "; no audit hook"))

    def check_works(self) -> None:
        """Run a trivial program once: SandboxError (one line: what failed and how to fix it) when this machine cannot
        sandbox, so that a run stops before it starts rather than scoring every program 0."""
        if self.isolation == "bubblewrap" and shutil.which("bwrap") is None:
            raise SandboxError(f"bubblewrap is not installed (no bwrap on PATH): {INSTALL_BUBBLEWRAP}")
        if self.isolation == "bubblewrap" and (missing := [o for o in NEEDED_OPTIONS if o not in bubblewrap_options()]):
            raise SandboxError(f"this bubblewrap has no {', '.join(missing)} (bwrap --version: a newer release has them; "
                               "Debian 12 and Ubuntu 24.04 ship one)")
        outcome = self.run("x = 6 * 7", [Check("x", "==", 42)])
        if outcome.passed != (True,):
            raise SandboxError(f"a trivial program did not pass in the sandbox ({outcome.status}: {outcome.detail})")

    def run(self, program: str, checks: list[Check]) -> Outcome:
        """Run `program` and evaluate its checks in a fresh sandbox; SandboxError when the sandbox itself failed."""
        job = {"program": program, "checks": [c.code for c in checks], "guard": self.guard, **asdict(self.limits),
               "drop_root": self.isolation == "bubblewrap" and self.root}
        if self.isolation == "bubblewrap":
            return self._run(job, checks, work=None)
        work = tempfile.mkdtemp(prefix="dynamo-sandbox-")
        try:
            return self._run(job, checks, work=work)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # rmtree does not follow the program's symlinks

    def _argv(self, *, info_fd: int, block_fd: int | None) -> list[str]:
        python = [interpreter(), "-I", "-S", "-c", CHILD_SOURCE]
        if self.isolation == "none":
            return python
        argv = ["bwrap", "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--clearenv",
                "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8", "--hostname", "sandbox",
                "--info-fd", str(info_fd)]
        if block_fd is not None:
            # As the host's root, bubblewrap would map the sandbox to host uid 0, which RLIMIT_NPROC exempts. It waits
            # on block_fd while this process writes the maps (namespace 0 = host 0 for bubblewrap's own set-up,
            # 65534 = host nobody), and the child drops from 0 to 65534 before the program runs.
            argv += ["--userns-block-fd", str(block_fd)]
        else:  # as any other user: the sandbox's 65534 is that user, and no namespace may be nested in it (bwrap >= 0.8)
            argv += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
            argv += ["--disable-userns"] if "--disable-userns" in bubblewrap_options() else []
        return [*argv, *interpreter_mounts(), "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
                "--size", str(self.limits.file_mb << 20), "--tmpfs", WORK_DIR, "--remount-ro", "/", "--chdir", WORK_DIR,
                *python]

    def _run(self, job: dict, checks: list[Check], *, work: str | None) -> Outcome:
        deadline = time.monotonic() + self.limits.timeout
        bubblewrap = work is None
        results_r, results_w = os.pipe()
        info_r, info_w = os.pipe() if bubblewrap else (-1, -1)
        block_r, block_w = os.pipe() if bubblewrap and self.root else (-1, -1)
        job["results_fd"] = results_w
        ours, theirs = [results_r, info_r, block_w], [results_w, info_w, block_r]
        try:
            try:
                proc = subprocess.Popen(
                    self._argv(info_fd=info_w, block_fd=block_r if block_r >= 0 else None), cwd=work or "/",
                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                    pass_fds=[fd for fd in theirs if fd >= 0], start_new_session=True,
                    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **({"HOME": work} if work else {})})
            except OSError as error:
                raise SandboxError(f"could not start the sandbox: {error}") from error
            finally:
                for fd in theirs:
                    if fd >= 0:
                        os.close(fd)
            try:
                exited = os.pidfd_open(proc.pid)  # readable once it exits, before anything reaps it
            except OSError as error:  # Linux before 5.3
                _kill(proc)
                raise SandboxError(f"no pidfd for the sandbox's process: {error}") from error
            ours.append(exited)
            try:
                return self._supervise(proc, job, checks, deadline=deadline, results=results_r, info=info_r,
                                       block=block_w, exited=exited, bubblewrap=bubblewrap)
            finally:
                _kill(proc)
        finally:
            for fd in ours:
                if fd >= 0:
                    os.close(fd)

    def _supervise(self, proc: subprocess.Popen, job: dict, checks: list[Check], *, deadline: float, results: int,
                   info: int, block: int, exited: int, bubblewrap: bool) -> Outcome:
        """Hand the child its job and read its reports, never waiting past the deadline."""
        if block >= 0:  # bubblewrap as root: write the user namespace's maps, then let it go on
            document = _read_json_object(info, deadline)
            try:
                for name in ("uid_map", "gid_map"):
                    with open(f"/proc/{document['child-pid']}/{name}", "w") as f:
                        f.write(f"0 0 1\n{SANDBOX_UID} {SANDBOX_UID} 1\n")
                os.write(block, b"1")
            except (OSError, KeyError, TypeError) as error:
                raise SandboxError(_failure(proc, f"could not map the sandbox's user namespace ({error})")) from error
        report, stderr, flooded = _exchange(proc, json.dumps(job).encode(), deadline=deadline, results=results)
        finished = not flooded and bool(select.select([exited], [], [], max(0.0, deadline - time.monotonic()))[0])
        passed, load_error = read_results(report.decode("utf-8", "replace"), checks)
        code = _exit_code(proc.pid) if finished else None
        if flooded:
            return Outcome("killed", tuple(passed), f"more than {MAX_RESULTS_BYTES} bytes of results")
        if not finished:
            return Outcome("timeout", tuple(passed), f"killed after {self.limits.timeout}s")
        if load_error is not None:
            return Outcome("load_error", tuple(passed), load_error)
        if not code:
            return Outcome("ok", tuple(passed))
        text = stderr.decode("utf-8", "replace").strip()
        if text.startswith("bwrap:") or text.startswith("Traceback"):  # bubblewrap's or the child's own failure: the
            raise SandboxError(text.splitlines()[-1])  # child points stderr at /dev/null before the program runs
        number = -code if code < 0 else code - 128 if bubblewrap and code > 128 else 0  # bubblewrap: 128 + signal
        if number > 0:
            try:
                return Outcome("killed", tuple(passed), signal.Signals(number).name)
            except ValueError:
                return Outcome("killed", tuple(passed), f"signal {number}")
        return Outcome("crashed", tuple(passed), f"exit code {code}")


def _exchange(proc: subprocess.Popen, job: bytes, *, deadline: float, results: int) -> tuple[bytes, bytes, bool]:
    """Write the job to the child's stdin and read the results pipe and stderr until the results pipe closes (every
    process that held it has exited or closed it), the deadline passes or the results pass MAX_RESULTS_BYTES.
    -> (results, the first MAX_STDERR_BYTES of stderr, flooded)."""
    stdin, stderr = proc.stdin.fileno(), proc.stderr.fileno()
    os.set_blocking(stdin, False)
    pending = memoryview(job)
    report, errors = bytearray(), bytearray()
    poller = select.poll()
    poller.register(results, select.POLLIN)
    poller.register(stderr, select.POLLIN)
    poller.register(stdin, select.POLLOUT)
    reading = {results, stderr}
    while results in reading and (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(left * 1000):
            if fd == stdin:
                try:
                    pending = pending[os.write(stdin, pending[:1 << 16]):]
                except BlockingIOError:
                    continue
                except OSError:  # the child is gone: nothing more to hand it
                    pending = pending[:0]
                if not pending:
                    poller.unregister(stdin)
                    proc.stdin.close()
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                poller.unregister(fd)
                reading.discard(fd)
            elif fd == results:
                report += chunk
                if len(report) > MAX_RESULTS_BYTES:
                    return bytes(report[:MAX_RESULTS_BYTES]), bytes(errors), True
            else:
                errors += chunk[: max(0, MAX_STDERR_BYTES - len(errors))]  # the rest is drained and dropped
    return bytes(report), bytes(errors), False


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process group (bubblewrap, or the child with task.isolation=none) and reap it. Under bubblewrap
    the PID namespace goes with it (--die-with-parent: its init is SIGKILLed, and the kernel kills every process in
    a namespace whose init dies), so a program's forks cannot outlive the run, setsid() or not."""
    try:  # not yet reaped (a zombie at worst), so its group id cannot have been reused
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    for stream in (proc.stdin, proc.stderr):
        try:
            stream.close()
        except OSError:
            pass


def _exit_code(pid: int) -> int:
    """The exit status of a child that has exited, as Popen.returncode gives it (-signal when killed), without reaping
    it: its process group id stays reserved for _kill."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None:
        return 0
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _failure(proc: subprocess.Popen, what: str) -> str:
    """`what`, and the last line bubblewrap wrote to stderr (read for at most a second once it is killed)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # not reaped yet: _kill reaps it
    except (ProcessLookupError, PermissionError):
        pass
    text, fd = b"", proc.stderr.fileno()
    while len(text) < MAX_STDERR_BYTES and select.select([fd], [], [], 1.0)[0] and (chunk := os.read(fd, MAX_STDERR_BYTES)):
        text += chunk
    lines = text.decode("utf-8", "replace").strip().splitlines()
    return f"{what}: {lines[-1]}" if lines else what
