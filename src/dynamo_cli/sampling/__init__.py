"""The `sampler` group: which training problems a step draws (protocols.Sampler).

One module per sampler, each holding its schema, its maths and its class, registered in `SAMPLERS` (base.py).
"""
from dynamo_cli.registry import import_all

import_all(__name__, __path__)
