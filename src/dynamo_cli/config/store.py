"""Every schema in Hydra's ConfigStore, where the YAML files in conf/ find them (`defaults: - /schema/<group>/<name>`)."""
from __future__ import annotations

from hydra.core.config_store import ConfigStore

from dynamo_cli.config.logger import LoggerConfig
from dynamo_cli.config.model import GGUFModelConfig, TinyModelConfig
from dynamo_cli.config.recipes import (
    EvalConfig,
    ExportConfig,
    ScoreConfig,
    SFTConfig,
    SweepConfig,
    SweepPresetConfig,
    TrainConfig,
)
from dynamo_cli.config.task import (
    CalcTaskConfig,
    ChatJsonlTaskConfig,
    CodeTaskConfig,
    GuessTaskConfig,
    JsonlTaskConfig,
    MathTaskConfig,
    ReasoningGymTaskConfig,
)


def register_schemas() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent). The train groups' options register their own schemas as their
    modules are imported (registry.py): importing each group's package is what stores them."""
    import dynamo_cli.allocation  # noqa: F401 - allocator
    import dynamo_cli.models.critic  # noqa: F401 - critic
    import dynamo_cli.modulation  # noqa: F401 - modulator
    import dynamo_cli.rollout  # noqa: F401 - rollout
    import dynamo_cli.sampling  # noqa: F401 - sampler
    import dynamo_cli.tasks  # noqa: F401 - the tasks' implementations (TASKS), which build_task looks up by schema

    cs = ConfigStore.instance()
    cs.store(name="sft_schema", node=SFTConfig)
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="sweep_schema", node=SweepConfig)
    cs.store(group="schema/sweep", name="preset", node=SweepPresetConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="score_schema", node=ScoreConfig)
    cs.store(group="schema/model", name="tiny", node=TinyModelConfig)
    cs.store(group="schema/model", name="gguf", node=GGUFModelConfig)
    cs.store(group="schema/task", name="math", node=MathTaskConfig)
    cs.store(group="schema/task", name="jsonl", node=JsonlTaskConfig)
    cs.store(group="schema/task", name="code", node=CodeTaskConfig)
    cs.store(group="schema/task", name="calc", node=CalcTaskConfig)
    cs.store(group="schema/task", name="guess", node=GuessTaskConfig)
    cs.store(group="schema/task", name="chat_jsonl", node=ChatJsonlTaskConfig)
    cs.store(group="schema/task", name="reasoning_gym", node=ReasoningGymTaskConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)
