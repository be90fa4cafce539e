"""docs/development.md "Adding a method" is a worked example that must work as written: this test takes its three
blocks (the module, the YAML, the test), puts them where the page says, and uses the method as a run would."""
from __future__ import annotations

import importlib.util
import re
import shutil
import sys

import pytest
import torch
from conftest import REPO
from hydra import compose, initialize_config_dir

from dynamo_cli.cli import CONF_DIR, register_resolvers, to_schema
from dynamo_cli.config.base import ConfigError
from dynamo_cli.config.store import register_schemas
from dynamo_cli.modulation.base import MODULATORS

REPO = REPO


def example_blocks() -> dict[str, str]:
    """path -> text of each fenced block in the section whose first line is `# <path>`."""
    page = (REPO / "docs" / "development.md").read_text()
    section = page.split("## Adding a method", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", section, flags=re.S)
    return {path: text for path, text in blocks}


@pytest.fixture
def example(tmp_path):
    blocks = example_blocks()
    assert sorted(blocks) == ["conf/modulator/clip_advantage.yaml", "src/dynamo_cli/modulation/clip_advantage.py",
                              "tests/unit/modulation/test_clip_advantage.py"]
    assert not (REPO / "src/dynamo_cli/modulation/clip_advantage.py").exists()  # the example is not part of the package
    module_file = tmp_path / "clip_advantage.py"
    module_file.write_text(blocks["src/dynamo_cli/modulation/clip_advantage.py"])
    name = "dynamo_cli.modulation.clip_advantage"
    spec = importlib.util.spec_from_file_location(name, module_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "modulator" / "clip_advantage.yaml").write_text(blocks["conf/modulator/clip_advantage.yaml"])
    try:
        spec.loader.exec_module(module)  # registers the modulator and its schema
        yield module, conf, blocks["tests/unit/modulation/test_clip_advantage.py"]
    finally:
        sys.modules.pop(name, None)
        MODULATORS._parts.pop("clip_advantage", None)  # the registry is shared by the session's other tests


def test_the_worked_example_composes_builds_and_runs(example):
    module, conf, test_text = example
    register_schemas()
    register_resolvers()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = to_schema(compose(config_name="train", overrides=["modulator=clip_advantage", "modulator.bound=0.5"]))
        with pytest.raises(ConfigError, match=r"modulator.bound=-1.0 must be > 0"):
            to_schema(compose(config_name="train", overrides=["modulator=clip_advantage", "modulator.bound=-1"]))
    modulator = MODULATORS.build(cfg.modulator, eps_low=cfg.algorithm.eps_low, eps_high=cfg.algorithm.eps_high)
    assert isinstance(modulator, module.ClipAdvantageModulator) and modulator.bound == 0.5
    shaped = modulator(advantages=torch.tensor([[2.0, -0.25]]), mask=torch.tensor([[True, True]]))
    assert shaped.advantages.tolist() == [[0.5, -0.25]] and shaped.metrics["mod/clipped_frac"] == 0.5
    namespace: dict = {}
    exec(compile(test_text, "test_clip_advantage.py", "exec"), namespace)  # the example's own test
    namespace["test_clip_advantages_by_hand"]()
