"""What users see of conf/ cannot change by accident: every command x every config-group option x every experiment
and sweep preset (scripts/compose_snapshot.py's cases), composed and resolved in this process, must equal
tests/fixtures/composed_configs.json, case by case, down to the order of the keys.

The YAML files in conf/ set only what differs from the schema defaults, and presets share a base through Hydra's
defaults list (experiment=clip_cov is `- clip_higher` plus its modulator), so a one-line edit to a schema default,
a base preset or a group option can reach many composed configs; this test names every one it reaches.

When a change adds or changes a config key or default on purpose, regenerate the fixture:

    python scripts/compose_snapshot.py tests/fixtures/composed_configs.json

and review the fixture's diff in the commit: each changed line is a change users see.
"""
from __future__ import annotations

import difflib
import importlib.util
import json

import pytest
from conftest import REPO

REPO = REPO
FIXTURE = REPO / "tests" / "fixtures" / "composed_configs.json"
REGENERATE = "python scripts/compose_snapshot.py tests/fixtures/composed_configs.json"


def load_script():
    spec = importlib.util.spec_from_file_location("compose_snapshot", REPO / "scripts" / "compose_snapshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_composed_config_matches_the_fixture():
    expected = json.loads(FIXTURE.read_text())
    actual = load_script().snapshot()  # one process, one Hydra context: ~15 s for every case

    added, removed = sorted(actual.keys() - expected.keys()), sorted(expected.keys() - actual.keys())
    assert not added and not removed, (
        f"the set of cases changed (a config-group option or preset added or removed?)\n"
        f"  new cases: {added}\n  cases gone: {removed}\nif on purpose: {REGENERATE}, and review the diff")

    changed = [case for case in expected if actual[case] != expected[case]]
    if changed:
        first = changed[0]
        diff = "".join(difflib.unified_diff(expected[first].splitlines(keepends=True), actual[first].splitlines(keepends=True),
                                            fromfile=f"fixture: {first}", tofile=f"composed now: {first}"))
        pytest.fail(
            f"{len(changed)} of {len(expected)} composed configs differ from tests/fixtures/composed_configs.json.\n"
            f"first, `{first}`:\n{diff}\n"
            f"all that differ: {changed}\n"
            f"if this change is on purpose: {REGENERATE}, and review the fixture's diff in the commit", pytrace=False)
