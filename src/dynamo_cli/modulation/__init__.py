"""The `modulator` group: token-level shaping of the advantages inside the update, once per mini-batch.

One module per modulator (none, dynamo, and the paper's token-level baselines), each holding its schema, its pure
maths and its class, registered in `MODULATORS` (base.py). To add one: a module here, `conf/modulator/<name>.yaml`
(`defaults: [/schema/modulator/<name>@_here_, _self_]`), a test with hand-worked values (docs/development.md).
"""
from dynamo_cli.registry import import_all

import_all(__name__, __path__)
