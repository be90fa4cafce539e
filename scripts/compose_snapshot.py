"""Compose every command x every config-group option x every experiment and sweep preset, resolved, and write them
as JSON: what a user sees of conf/ (`dynamo <command> --cfg job`), one YAML text per case.

    python scripts/compose_snapshot.py tests/fixtures/composed_configs.json

regenerates the fixture that tests/test_composed_configs.py compares against. Run it when a change adds or changes
a config key or default on purpose, and review the fixture's diff in the commit: every line of it is a change users
see. A case that fails to compose or validate is recorded as `ERROR <type>: <first line of the message>`.

The checkout's absolute path is written as `<repo>`, so the fixture is the same on every machine.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dynamo_cli.cli import CONF_DIR, register_resolvers
from dynamo_cli.runtime import atomic

try:
    from dynamo_cli.config import register_schemas
except ImportError:  # the schemas' ConfigStore registration may live in its own module
    from dynamo_cli.config.store import register_schemas

REPO_ROOT = CONF_DIR.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"
# every option of these groups is composed for `train`; sft and eval have only model, task and logger
GROUPS = ("model", "task", "logger", "sampler", "allocator", "modulator", "rollout", "critic", "experiment")
TRAIN_ONLY = ("sampler", "allocator", "modulator", "rollout", "critic", "experiment")
# options that need a key set to compose: task=jsonl has no default problems file
EXTRA = {"jsonl": [f"task.path={FIXTURES}/arith_word_problems.jsonl"]}


def cases() -> list[tuple[str, list[str]]]:
    """(command, overrides) for every case: each command on its defaults, then one group option at a time."""
    out: list[tuple[str, list[str]]] = []
    for command in ("train", "sft", "eval"):
        out.append((command, []))
        for group in GROUPS:
            if command != "train" and group in TRAIN_ONLY:
                continue
            for path in sorted((CONF_DIR / group).glob("*.yaml")):
                extra = EXTRA.get(path.stem, []) if group == "task" else []
                out.append((command, [f"{group}={path.stem}", *extra]))
    out += [("train", ["critic=separate", "algorithm.advantage=gae"]), ("train", ["critic=shared", "algorithm.advantage=gae"])]
    for path in sorted((CONF_DIR / "sweep").glob("*.yaml")):
        out.append(("sweep", [f"sweep={path.stem}", "out_dir=X"]))
    return out


def portable(text: str) -> str:
    """The checkout's path as `<repo>`: the same fixture on every machine."""
    return text.replace(f"{REPO_ROOT}/", "<repo>/")


def compose_case(command: str, overrides: list[str]) -> str:
    """The case's config as `--cfg job` would print it, resolved (call inside initialize_config_dir)."""
    try:
        cfg = compose(config_name=command, overrides=overrides)
        obj = OmegaConf.to_object(cfg)  # builds the dataclasses: every __post_init__ check runs
        node = cfg if isinstance(obj, dict) else OmegaConf.structured(obj)
        return OmegaConf.to_yaml(node, resolve=True)
    except Exception as e:  # noqa: BLE001 -- a refused combination is part of what users see
        return f"ERROR {type(e).__name__}: {str(e).splitlines()[0]}"


def snapshot() -> dict[str, str]:
    """{"<command> <overrides>": composed YAML} for every case, composed in this process."""
    register_schemas()
    register_resolvers()
    out = {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for command, overrides in cases():
            out[portable(f"{command} {' '.join(overrides)}")] = portable(compose_case(command, overrides))
    return out


def dumps(snap: dict[str, str]) -> str:
    return json.dumps(snap, indent=1, sort_keys=True) + "\n"


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python scripts/compose_snapshot.py <out.json>   (the fixture: tests/fixtures/composed_configs.json)")
    snap = snapshot()
    atomic.write_text(Path(argv[0]), dumps(snap))
    errors = sum(v.startswith("ERROR") for v in snap.values())
    print(f"{len(snap)} cases ({errors} refused with a config error) -> {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
