"""Figures that cannot drift: README's demo block is exactly what scripts/demo_report.py renders from the
committed docs/demo.json, and neither README nor docs/ names a path of the machine they were made on."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from conftest import REPO

REPO = REPO


def _report():
    spec = importlib.util.spec_from_file_location("demo_report", REPO / "scripts" / "demo_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_demo_block_is_the_committed_summary():
    report = _report()
    summary = json.loads((REPO / "docs" / "demo.json").read_text())
    readme = (REPO / "README.md").read_text()
    assert report.START in readme and report.END in readme
    block = readme[readme.index(report.START): readme.index(report.END) + len(report.END)]
    assert block == report.readme_block(summary), "README's demo block differs from docs/demo.json: rerun DOCS=1 make demo"


def test_demo_summary_names_its_commit_and_its_gains_add_up():
    summary = json.loads((REPO / "docs" / "demo.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", summary["commit"])
    for metric, gain in summary["gain"].items():
        per_seed = [s["rl"][metric] - s["sft"][metric] for s in summary["per_seed"]]
        assert abs(gain["mean"] - sum(per_seed) / len(per_seed)) < 1e-12
        assert gain["seeds"] == len(per_seed)


def test_no_machine_paths_in_docs():
    texts = {p: p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "docs").glob("*.json"))]}
    for path, text in texts.items():
        found = re.findall(r"(?<![\w.~])/(?:tmp|root|home|work|Users)/[\w.-]+", text)
        assert not found, f"{path.name} names machine paths: {found[:3]}"


def test_every_generated_section_of_the_results_page_names_its_commit():
    text = (REPO / "docs" / "results.md").read_text()
    sections = re.findall(r"<!-- BEGIN (.+?) \(generated\) -->(.*?)<!-- END \1 \(generated\) -->", text, flags=re.DOTALL)
    assert sections, "docs/results.md has no generated section"
    for name, body in sections:
        assert re.search(r"from commit `[0-9a-f]{7,40}(-dirty)?`", body), f"section {name!r} does not name its commit"


_FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.DOTALL | re.MULTILINE)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", flags=re.DOTALL)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_links(text: str) -> list[str]:
    """The targets of the inline links [text](target) of a markdown text, outside code, that are not http(s),
    mailto or a bare #anchor; each without its #anchor."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", text))
    targets = []
    for target in _LINK.findall(text):
        if re.match(r"(?i)(https?:|mailto:|#)", target):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    """Each relative link of `page` that escapes `root` or names nothing that exists, with the reason."""
    bad = []
    for target in relative_links(page.read_text()):
        if target.startswith("/") or re.match(r"[A-Za-z]:", target):
            bad.append(f"{target} (absolute)")
            continue
        resolved = (page.parent / target).resolve()
        if not resolved.is_relative_to(root.resolve()):
            bad.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            bad.append(f"{target} (no such file or directory)")
    return bad


def test_every_relative_link_in_readme_and_docs_resolves_inside_the_repository():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    assert len(pages) > 1
    problems = {page.relative_to(REPO).as_posix(): broken_links(page) for page in pages}
    problems = {page: bad for page, bad in problems.items() if bad}
    assert not problems, f"broken links: {problems}"


def test_the_link_check_catches_a_missing_target_and_an_escape(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "src").mkdir()
    (tmp_path / "outside.md").write_text("x")
    page = root / "docs" / "page.md"
    page.write_text(
        "[ok](../src/) [ok](page.md#a-section) [web](https://example.org/x) [mail](mailto:a@b.c) [anchor](#here)\n"
        "`[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n"
        "[missing](gone.md#part) [escape](../../outside.md) ![image](../img.png)\n"
    )
    assert broken_links(page, root) == [
        "gone.md (no such file or directory)", "../../outside.md (outside the repository)",
        "../img.png (no such file or directory)",
    ]
