"""docs/results.md: one page of generated sections, each rewritten on its own between its marker comments."""
from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from dynamo_cli.runtime import atomic

PAGE_HEAD = ("# dynamo results\n\n"
             "<!-- generated file: do not edit by hand. -->\n"
             "This page is generated, never hand-edited: the sweep section by `dynamo sweep`, the benchmark section by\n"
             "`make bench`. Each section states the command, date and machine that produced it, and is rewritten\n"
             "on its own between its marker comments.\n")


def markers(section: str) -> tuple[str, str]:
    return f"<!-- BEGIN {section} (generated) -->", f"<!-- END {section} (generated) -->"


def update_results_page(path: Path, *, section: str, body: str) -> Path:
    """Replace the text between `section`'s markers (appending the section if absent); other sections stay."""
    path = Path(path)
    begin, end = markers(section)
    text = path.read_text() if path.is_file() else PAGE_HEAD
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), flags=re.DOTALL)
    text = pattern.sub(lambda _: block, text, count=1) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, text)  # a reader never sees half a page
    return path


def copy_figures(figures: Sequence[Path], *, dest_dir: Path, prefix: str) -> list[Path]:
    """Copy each figure into dest_dir as `<prefix><name>`; returns the copies' paths."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for figure in figures:
        target = dest_dir / f"{prefix}{Path(figure).name}"
        atomic.write_file(target, lambda tmp, figure=figure: shutil.copyfile(figure, tmp))
        out.append(target)
    return out
