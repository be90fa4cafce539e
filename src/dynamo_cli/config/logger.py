"""logger schemas."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from dynamo_cli.config.base import one_of


# -------------------------------------------------------------------------------------- logging
@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb | none (metrics.jsonl is always written)
    mode: str = "offline"  # offline (files in the run dir, `wandb sync` later) | online | disabled
    project: str = "dynamo"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    console: str = "auto"  # auto (rich on a terminal, plain lines otherwise) | rich | plain

    def __post_init__(self) -> None:
        one_of("logger.name", self.name, ("wandb", "none"))
        one_of("logger.mode", self.mode, ("offline", "online", "disabled"))
        one_of("logger.console", self.console, ("auto", "rich", "plain"))
