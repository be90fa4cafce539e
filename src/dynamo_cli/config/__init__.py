"""Typed config schemas: the single home of every default.

Hydra merges the YAML files in `conf/` onto these dataclasses, so an unknown key or a value of the
wrong type fails at compose time. Checks that involve values (ranges, cross-field constraints, paths
that must exist) live in `__post_init__` and run when `OmegaConf.to_object` builds the dataclasses,
once, at the edge (`cli.py`). Everything past that point receives plain, validated dataclasses.

Each config-group option has its own schema (stored under `schema/<group>/<option>` and pulled in by
the option's YAML), so `allocator=uniform` carries no variance-only knobs."""
