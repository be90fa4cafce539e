# dynamo-sandbox-child: this marker is on every sandboxed process's command line (tests look for leftovers by it)
"""The sandbox's child: runs one untrusted program and evaluates its checks. verify/sandbox.py starts it as
`python -I -S -c <this source>` (inside bubblewrap, or as a plain process with task.isolation=none); it is never
imported, and imports nothing of dynamo (it starts in milliseconds).

Order matters: read the job from stdin; as the user namespace's root (bubblewrap started by root), hand the work dir
to uid 65534 and drop to it, so that RLIMIT_NPROC binds (the kernel exempts host root); lower the resource limits; point
stdout and stderr at /dev/null; install the audit hook (a second layer only); and only then run the program.

Each check's value goes to the results pipe (an fd whose read end only the parent holds) as one JSON line, as it is
computed, so a program killed half-way keeps the checks it had passed. A value crosses as tagged JSON built of
builtin types only (exact types: no subclass, no object with a rigged __eq__); the parent rebuilds it and compares it
with the expected value, which this process never sees. The program can write to the pipe too, but only values: to
pass it must produce the right ones.
"""
import json
import os
import resource
import sys

SANDBOX_UID = 65534  # `nobody`: the uid programs run as inside the user namespace
MAX_DEPTH = 50  # nesting of a reported value
MAX_LINE = 100_000  # characters of one report
SCALARS = (int, float, str, bool, type(None))
SEQUENCES = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset"}


def encode(value, depth=0):
    """A plain value as JSON: scalars as they are, everything else tagged, e.g. (1, b"a") -> {"tuple": [1, {"bytes":
    "61"}]}. TypeError for anything not built of exact builtin types (or nested deeper than MAX_DEPTH)."""
    if depth > MAX_DEPTH:
        raise TypeError("nested too deep")
    kind = type(value)
    if kind in SCALARS:
        return value
    if kind in SEQUENCES:
        return {SEQUENCES[kind]: [encode(v, depth + 1) for v in value]}
    if kind is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    raise TypeError(f"not a plain value: {kind.__name__}")


def drop_root(work):
    """As root of the user namespace (the host's root started bubblewrap): give the work dir to SANDBOX_UID and become
    it, with no supplementary groups and, since the uid changes from 0, no capabilities left."""
    os.chown(work, SANDBOX_UID, SANDBOX_UID)
    os.setgroups([])
    os.setresgid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
    os.setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)


def limit(job):
    mb = 1 << 20
    cpu = job["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at the soft limit, SIGKILL a second later
    for name, value in (("RLIMIT_AS", job["memory_mb"] * mb), ("RLIMIT_FSIZE", job["file_mb"] * mb),
                        ("RLIMIT_NOFILE", 64), ("RLIMIT_CORE", 0), ("RLIMIT_NPROC", job["max_processes"])):
        resource.setrlimit(getattr(resource, name), (value, value))


def install_guard(work):
    """A Python-level second layer (PEP 578 audit hook): no sockets, no new processes, no native code loading, no
    writes outside the work dir, no reads outside it and the standard library. Python code can get around it
    (gc, extension modules), so nothing relies on it: under bubblewrap the kernel holds without it."""
    readable = tuple({os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                               sys.base_exec_prefix, os.path.dirname(os.__file__))})
    inside = os.path.realpath(work) + os.sep
    denied = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
              "socket.sendto", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
              "subprocess.Popen", "os.kill", "os.killpg", "ctypes.dlopen", "ctypes.dlsym", "resource.setrlimit",
              "os.setuid", "os.chroot", "os.symlink", "os.link", "sys.addaudithook", "mmap.__new__", "pty.spawn",
              "os.chdir", "os.fchdir", "sys.remote_exec"}
    blocked_modules = {"ctypes", "_ctypes", "cffi", "_posixsubprocess", "_xxsubinterpreters", "_testcapi"}
    moving = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.utime",
              "shutil.rmtree", "os.chflags", "os.mkfifo", "os.mknod"}
    native = (".so", ".pyd", ".dylib")
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def where(path):
        if isinstance(path, int):
            return None  # an fd already open
        return os.path.realpath(os.fsdecode(path)) + os.sep

    def hook(event, args):
        if event in denied:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import":
            if args[0].split(".")[0] in blocked_modules:
                raise PermissionError(f"sandbox: import {args[0]} is not allowed")
        elif event == "open":
            path, mode, flags = args
            at = where(path)
            if at is None or at == "/dev/null" + os.sep:
                return
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
            if not at.startswith(inside) and (writing or not at.startswith(readable)):
                raise PermissionError(f"sandbox: {'writing' if writing else 'reading'} {path} is not allowed")
            if writing and at[:-1].endswith(native):  # an extension module written here could be imported: native code
                raise PermissionError(f"sandbox: writing {path} is not allowed")
        elif event in moving:
            at = where(args[0])
            if at is not None and not at.startswith(inside):
                raise PermissionError(f"sandbox: {event} on {args[0]} is not allowed")
            if event == "os.rename" and (dst := where(args[1])) is not None and (
                    not dst.startswith(inside) or dst[:-1].endswith(native)):
                raise PermissionError(f"sandbox: {event} to {args[1]} is not allowed")

    sys.addaudithook(hook)


def report(fd, row):
    """One JSON line to the results pipe (os.write: no buffer a program could leave unflushed)."""
    data = (json.dumps(row) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def outcome(code, namespace):
    """The row a check reports: ["value", <tagged JSON>] or ["fail", <why>]."""
    try:
        value = encode(eval(code, namespace))
        text = json.dumps(value)
    except BaseException as error:  # noqa: B036 - whatever the program raised or returned, it is a failed check
        return ["fail", type(error).__name__]
    if len(text) > MAX_LINE:
        return ["fail", "value too large"]
    return ["value", value]


def main():
    job = json.loads(sys.stdin.buffer.read())
    sys.stdin.close()
    results, work = job["results_fd"], os.getcwd()
    if job["drop_root"]:
        drop_root(work)
    limit(job)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the program's prints go nowhere: the parent reads only the results pipe
    os.dup2(devnull, 2)
    if job["guard"]:
        install_guard(work)
    namespace = {"__name__": "__solution__", "__builtins__": __builtins__}
    try:
        exec(compile(job["program"], "solution.py", "exec"), namespace)
    except BaseException as error:  # noqa: B036 - the program's failure, whatever it is, is reported
        report(results, ["load", type(error).__name__])
        return
    for i, code in enumerate(job["checks"]):
        report(results, [i, *outcome(code, namespace)])


if __name__ == "__main__":
    try:
        main()
    except BaseException:  # noqa: B036 - the harness itself failed: a traceback (to the parent, before the program runs)
        import traceback

        traceback.print_exc()
        os._exit(1)
    os._exit(0)  # no atexit handlers or finalisers of the program run after its checks
