"""Writes that land whole or not at all: a crash never leaves half a file or half a checkpoint dir, and never
replaces a good one with a broken one. Everything dynamo must not lose (checkpoints, eval.json, metrics
truncation on resume, the results page, converted models) is written through here."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Optional


def write_text(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fsync_tree(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_dir(target: Path, write: Callable[[Path], None], check: Optional[Callable[[Path], None]] = None) -> Path:
    """`write(tmp)` fills a temporary dir beside `target`; it is fsynced, `check(tmp)` (if given) reads it back and
    raises if it is not whole, then it is renamed into place. An existing `target` is moved aside first and removed
    last, so a crash leaves one of the two whole. A failed write (a full disk) removes the temporary dir and raises."""
    target = Path(target)
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        _fsync_tree(tmp)
        if check is not None:
            check(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space a full disk needs; `target` was never touched
        raise
    if target.exists():
        old = target.with_name(f".old-{target.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    _fsync_tree(target.parent)
    return target
