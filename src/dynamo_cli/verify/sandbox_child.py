"""The sandbox's child: runs one untrusted program and its checks. Started by verify/sandbox.py as
`[unshare --net --] python -I -S verify/sandbox_child.py`, never imported (no dynamo import: it starts in milliseconds).

Order matters: read the job from stdin, lower the resource limits, drop root to `nobody`, install the audit hook, and
only then run the program. Each check's outcome is written to results.txt in the work dir as it happens, so a
program killed half-way keeps the checks it passed. A value check sends back repr(value) of plain builtin types
only; the parent compares it with the expected value, which this process never sees.
"""
import json
import os
import resource
import sys

PLAIN = (int, float, complex, str, bytes, bool, type(None))
MAX_REPR = 100_000  # characters of one reported value


def plain(value, depth=0):
    """True for values built only of builtin types (no subclass can fake __eq__ or __repr__)."""
    if depth > 50:
        return False
    if type(value) in PLAIN:
        return True
    if type(value) in (list, tuple, set, frozenset):
        return all(plain(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(plain(k, depth + 1) and plain(v, depth + 1) for k, v in value.items())
    return False


# Imported before the uid drop: `nobody` may not be able to read the standard library (here it lives under /root).
# socket too, so that the tests prove the audit hook and the network namespace stop it, not the file permissions.
PRELOAD = ("math", "cmath", "re", "string", "collections", "itertools", "functools", "heapq", "bisect", "operator",
           "fractions", "decimal", "random", "copy", "typing", "dataclasses", "statistics", "datetime", "time", "array",
           "enum", "numbers", "textwrap", "unicodedata", "socket")


def limit(job):
    mb = 1 << 20
    cpu = job["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at the soft limit, SIGKILL a second later
    for name, value in (("RLIMIT_AS", job["memory_mb"] * mb), ("RLIMIT_FSIZE", job["file_mb"] * mb),
                        ("RLIMIT_NOFILE", 64), ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
    if os.getuid() == 0:  # root ignores RLIMIT_NPROC: run as nobody, whose processes it then bounds
        resource.setrlimit(resource.RLIMIT_NPROC, (job["max_processes"], job["max_processes"]))
        os.setgroups([])
        os.setgid(job["gid"])
        os.setuid(job["uid"])


def install_guard(work):
    """A Python-level guard (PEP 578 audit hook; it cannot be removed from Python code): no sockets, no new
    processes, no native code loading, no writes outside the work dir, no reads outside it and the stdlib."""
    readable = tuple({os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                               sys.base_exec_prefix, os.path.dirname(os.__file__))})
    inside = os.path.realpath(work) + os.sep
    denied = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
              "socket.sendto", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
              "subprocess.Popen", "os.kill", "os.killpg", "ctypes.dlopen", "ctypes.dlsym", "resource.setrlimit",
              "os.setuid", "os.chroot", "os.symlink", "os.link", "sys.addaudithook", "mmap.__new__", "pty.spawn",
              "os.chdir", "os.fchdir", "sys.remote_exec"}
    blocked_modules = {"ctypes", "_ctypes", "cffi", "_posixsubprocess", "_xxsubinterpreters"}
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


def main():
    job = json.loads(sys.stdin.read())
    sys.stdin.close()
    for module in PRELOAD:
        __import__(module)
    limit(job)
    results = open("results.txt", "w", buffering=1)  # in the work dir (cwd), opened before the guard
    if job["guard"]:
        install_guard(os.getcwd())
    namespace = {"__name__": "__solution__", "__builtins__": __builtins__}
    try:
        exec(compile(job["program"], "solution.py", "exec"), namespace)
    except BaseException as error:  # noqa: B036 - the program's failure, whatever it is, is reported
        results.write(json.dumps(["load", type(error).__name__]) + "\n")
        return
    for i, check in enumerate(job["checks"]):
        try:
            if check["kind"] == "value":
                value = eval(check["code"], namespace)
                if not plain(value):
                    outcome = ["fail", f"not a plain value: {type(value).__name__}"]
                else:
                    outcome = ["value", repr(value)[:MAX_REPR]]
            else:
                exec(check["code"], namespace)
                outcome = ["pass", None]
        except BaseException as error:  # noqa: B036
            outcome = ["fail", type(error).__name__]
        results.write(json.dumps([i, *outcome]) + "\n")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # no atexit handlers or finalisers of the program run after its checks
