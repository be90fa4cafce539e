"""The real runs of tests/unit/.../test_lora.py: loRA end to end on the tiny model: sft -> adapter checkpoint -> eval, export, RL train and resume.

The recipes run in-process (no CLI start-up per run), each in a few seconds on one CPU thread."""
from __future__ import annotations

from conftest import dynamo
from hydra import compose, initialize_config_dir

from dynamo_cli.cli import CONF_DIR, to_schema
from dynamo_cli.config.recipes import ExportConfig


def compose_schema(command: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        quiet = [] if command == "export" else ["logger=none"]  # export logs nothing: it has no logger group
        return to_schema(compose(config_name=command, overrides=[*quiet, *overrides]))


def test_export_refuses_a_non_empty_output_dir(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = dynamo("export", f"output={tmp_path}", check=False)
    assert result.returncode == 2 and "exists and is not an empty dir" in result.stderr
    assert isinstance(compose_schema("export", []), ExportConfig)
