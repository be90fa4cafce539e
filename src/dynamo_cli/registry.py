"""A config group's options: each name maps to its schema (the dataclass every default of the option lives in)
and its implementation (a class or a function returning the part).

A method registers itself once, in its own module, beside its schema and its maths:

    @dataclass
    class MineAllocatorConfig(AllocatorConfig):
        name: str = "mine"
        boost: float = 2.0  # the one knob

    @ALLOCATORS.register("mine", schema=MineAllocatorConfig)
    class MineAllocator(UniformAllocator):
        def __init__(self, *, n: int, boost: float, explore_min_attempts: int, decay: float): ...

Registering also stores the schema in Hydra's ConfigStore as `schema/<group>/<name>`, which the option's YAML
(`conf/<group>/<name>.yaml`) pulls in. Building is generic: the implementation is called with the schema's
fields that it names as parameters, plus the run's context values (`n`, `seed`, `problems`, ...) that it names;
nothing else chooses a part, and a group's allowed values are `Registry.names()`. The package of a group imports
every module in its folder (`import_all`), so a new module registers itself without another list to edit.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from typing import Any, Callable, Generic, Optional, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, group: str, *, key: Callable[[Any], Any] = lambda cfg: cfg.name):
        self.group = group  # the conf/ group (and schema/<group> in the ConfigStore)
        self.key = key  # what in a config picks its option: the name; tasks: the schema; estimators: algorithm.advantage
        self._parts: dict[Any, tuple[Optional[type], Callable[..., T]]] = {}

    def register(self, name: Any, *, schema: Optional[type] = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(implementation: Callable[..., T]) -> Callable[..., T]:
            if name in self._parts:
                raise ValueError(f"{self.group} {name!r} is registered twice")
            self._parts[name] = (schema, implementation)
            if schema is not None and isinstance(name, str):
                from hydra.core.config_store import ConfigStore

                ConfigStore.instance().store(group=f"schema/{self.group}", name=name, node=schema)
            return implementation

        return add

    def build(self, cfg: Any, **context: Any) -> T:
        """The part `cfg` selects, called with the fields of `cfg` and the `context` values its parameters name."""
        key = self.key(cfg)
        if key not in self._parts:
            raise KeyError(f"no {self.group} for {key!r}; registered: {', '.join(map(str, self._parts))}")
        _, implementation = self._parts[key]
        wanted = parameters(implementation)
        fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)} if dataclasses.is_dataclass(cfg) else {}
        if clash := sorted(set(fields) & set(context) & wanted):
            raise TypeError(f"{self.group} {key!r}: {clash} is both a config field and a run context value")
        values = {k: v for k, v in {**fields, **context}.items() if k in wanted}
        return implementation(**values)

    def names(self) -> list[Any]:
        return list(self._parts)

    def schema(self, name: Any) -> Optional[type]:
        return self._parts[name][0]

    def items(self) -> list[tuple[Any, Callable[..., T]]]:
        """(name, implementation) in registration order."""
        return [(name, implementation) for name, (_, implementation) in self._parts.items()]


def parameters(implementation: Callable) -> set[str]:
    """The keyword parameters a class's __init__ or a function takes."""
    target = implementation.__init__ if inspect.isclass(implementation) else implementation
    return {p.name for p in inspect.signature(target).parameters.values()
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def import_all(package_name: str, package_path: list[str]) -> None:
    """Import every module of a package (each registers its option): a group's folder is its list of options."""
    for module in pkgutil.iter_modules(package_path):
        importlib.import_module(f"{package_name}.{module.name}")
