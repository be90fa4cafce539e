"""base schemas."""
from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value is invalid. The message is one line naming the key and what is allowed."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    check(value in allowed, f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def positive(key: str, value: float, *, strict: bool = True) -> None:
    check(value > 0 if strict else value >= 0, f"{key}={value} must be {'> 0' if strict else '>= 0'}")


def check_batch_size(key: str, value: Any) -> None:
    """A batch size: a positive integer, or `auto` (picked from free memory at start-up, see runtime/resources.py)."""
    check(value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0),
           f"{key}={value!r} must be a positive integer or auto")


class GroupConfig:
    """What every option of a train config group (sampler, allocator, modulator, rollout, critic) can do beyond its own
    fields' checks: check itself against the rest of the run, once, when TrainConfig is built."""

    def check_run(self, run) -> None:
        """Raise ConfigError (one line) when this option cannot run with `run`'s other choices. Default: nothing to check."""
