"""Name -> builder maps: how a config's `name` becomes the object that implements it.

Each swappable kind (task, sampler, allocator, modulator, rollout engine, advantage estimator, loss term) has
one `Registry`. A part registers a builder under its config name; the builder receives the part's validated
schema (config/, where every default lives) and the few run-level values it needs, and returns an object
that implements the kind's Protocol (protocols.py). Nothing else chooses a part: no `isinstance` chains, no
`if name == ...` in a loop.

    @ALLOCATORS.register("dapo")
    def _dapo(cfg: DapoAllocatorConfig, *, n: int) -> DapoAllocator:
        return DapoAllocator(n=n, max_rounds=cfg.max_rounds)
"""
from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, *, key: Callable[[Any], Any] = lambda cfg: cfg.name):
        self.kind, self.key = kind, key  # key: what in a config picks its builder (the name; tasks: the schema)
        self._builders: dict[Any, Callable[..., T]] = {}

    def register(self, name: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            return builder

        return add

    def build(self, cfg: Any, **context: Any) -> T:
        """The part named `cfg.name`, built from its schema `cfg` and the run-level `context`."""
        key = self.key(cfg)
        if key not in self._builders:
            raise KeyError(f"no {self.kind} for {key!r}; registered: {', '.join(map(str, self._builders))}")
        return self._builders[key](cfg, **context)

    def names(self) -> list[Any]:
        return list(self._builders)

    def items(self) -> list[tuple[Any, Callable[..., T]]]:
        """(name, builder) in registration order."""
        return list(self._builders.items())
