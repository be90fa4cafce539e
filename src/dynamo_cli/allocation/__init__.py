"""The `allocator` group: how many rollouts each of a step's prompts gets (protocols.Allocator), from the success
history every allocator keeps per prompt (base.HistoryAllocator, saved in checkpoints).

    base.py      the registry ALLOCATORS, the fields every schema shares, Allocation, the success history
    maths.py     the pure maths every allocator uses (Bernoulli variance, Laplace rate, water-filling, ...)
    uniform.py   n per prompt (GRPO)            variance.py  DynaMO: ∝ each prompt's Bernoulli variance
    dapo.py      DAPO's dynamic sampling        greso.py     GRESO: dapo plus a pre-rollout filter
    knapsack.py  Knapsack RL's value-maximising split

One module per allocator, each holding its schema (every default, with a comment), its pure maths (small functions
over tensors, hand-worked tests) and its class, registered by `@ALLOCATORS.register("<name>", schema=<Schema>)`.
`ALLOCATORS.build(cfg.allocator, n=cfg.rollout.n)` builds one: its __init__ takes the schema's fields by name, and
`n`, the budget per prompt. To add an allocator: its module here (imported below, so it registers itself),
`conf/allocator/<name>.yaml` (`defaults: [/schema/allocator/<name>@_here_, _self_]`), and a test with hand-worked
values.
"""
from dynamo_cli.registry import import_all

import_all(__name__, __path__)
