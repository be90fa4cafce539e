"""Writes that land whole or not at all: a crash never leaves half a file or half a checkpoint dir, and never
replaces a good one with a broken one. Everything dynamo must not lose (checkpoints, eval.json, config.yaml, metrics
truncation on resume, sweep and report outputs, the generated pages, converted models) is written through here:
to a temporary name beside the target, fsynced, renamed into place, and the directory fsynced, so the rename itself
survives a power cut.

A full disk is recognised whatever the library that hit it raised (`disk_full`): torch.save raises a RuntimeError
("file write failed") and safetensors its own error type, neither an OSError. Every write here turns it into
OSError(ENOSPC), which the callers report in one line.
"""
from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path
from typing import Callable, Optional

FULL_BYTES = 1 << 20  # a filesystem with less free than this after a failed write is full
# what libraries that wrap the OS error say: safetensors "IoError(Os { code: 28, kind: StorageFull ... })", Python and
# Rust "No space left on device (os error 28)", and quotas
_FULL_WORDS = ("no space left on device", "os error 28", "code: 28", "storagefull", "disk quota exceeded", "quotaexceeded")


def disk_full(error: BaseException, where: Optional[Path] = None) -> bool:
    """Whether `error`, whatever its type, comes from a full disk: ENOSPC or EDQUOT anywhere in its cause or context
    chain, a library's message that says so, or (a library that says nothing useful, as torch.save's "file write
    failed") the filesystem of `where` with less than FULL_BYTES free."""
    seen, current = set(), error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(word in str(current).lower() for word in _FULL_WORDS):
            return True
        current = current.__cause__ or current.__context__
    return where is not None and free_bytes(where) < FULL_BYTES


def free_bytes(where: Path) -> int:
    """Bytes this process may still write on the filesystem holding `where` (root may use the reserved blocks)."""
    path = Path(where)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stats = os.statvfs(path)
    except OSError:
        return FULL_BYTES  # unknown: not evidence of a full disk
    blocks = stats.f_bfree if os.geteuid() == 0 else stats.f_bavail
    return blocks * stats.f_frsize


def as_disk_full(error: BaseException, where: Path) -> BaseException:
    """OSError(ENOSPC) chained to `error` when it comes from a full disk (disk_full), else `error` itself."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return error
    if isinstance(error, Exception) and disk_full(error, where):
        full = OSError(errno.ENOSPC, f"No space left on device ({type(error).__name__}: {str(error).strip()[:200]})")
        full.__cause__ = error
        return full
    return error


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary(path: Path) -> Path:
    """A name beside `path` that no other writer (process or thread) uses, with `path`'s suffix (libraries such as
    matplotlib choose the format by it)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{threading.get_ident()}{path.suffix}")


def write_file(path: Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` writes a file at a temporary path beside `path` (a library's writer: savefig, csv, json); it is
    fsynced and renamed into place, then the directory is fsynced. On any failure the temporary file is removed and
    `path` is untouched; a full disk raises OSError(ENOSPC) whatever the writer raised."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        failure = as_disk_full(error, path.parent)
        tmp.unlink(missing_ok=True)  # frees the space a full disk needs
        if failure is error:
            raise
        raise failure from error
    fsync_dir(path.parent)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    return write_file(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path, text: str) -> Path:
    """`text` (UTF-8) to a temporary file beside `path`, fsynced, renamed into place."""
    return write_bytes(path, text.encode("utf-8"))


def _fsync_tree(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(root))


def write_dir(target: Path, write: Callable[[Path], None], check: Optional[Callable[[Path], None]] = None) -> Path:
    """`write(tmp)` fills a temporary dir beside `target`; it is fsynced, `check(tmp)` (if given) reads it back and
    raises if it is not whole, then it is renamed into place. An existing `target` is moved aside first and removed
    last, so a crash leaves one of the two whole (`.old-<name>` or `.tmp-<name>`: runtime/checkpoint.py recovers
    them). A failed write removes the temporary dir and raises; a full disk as OSError(ENOSPC), whatever the library
    that hit it raised."""
    target = Path(target)
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        _fsync_tree(tmp)
        if check is not None:
            check(tmp)
    except BaseException as error:
        failure = as_disk_full(error, tmp)  # before the temporary dir goes: removing it frees the space
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space a full disk needs; `target` was never touched
        if failure is error:
            raise
        raise failure from error
    if target.exists():
        old = target.with_name(f".old-{target.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    fsync_dir(target.parent)
    return target
