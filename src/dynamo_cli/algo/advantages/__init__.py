"""The advantage estimators (`algorithm.advantage`): rewards (and, for a critic, values) -> per-token advantages.

Group-relative estimators (grpo, drgrpo, rloo, w_reinforce) normalise each sequence's reward within its prompt's
group; groups have different sizes under dynamic allocation (docs/algorithm.md, Part 1), so rollouts are flat (B,)
tensors with a `group_index` (B,), and group statistics are gathered with index_add / scatter_reduce, never a Python
loop over groups. Groups of size 1 and groups whose rewards are all equal carry no learning signal: they get exactly
zero advantage and are flagged in `zero_signal` (logged as rollout/zero_signal_frac); verl instead gives a size-1
group the raw reward as advantage. gae reads a critic's values.

One module per estimator (its maths and its registration in ESTIMATORS, base.py); `algorithm.advantage` takes the
registered names.
"""
from dynamo_cli.registry import import_all

import_all(__name__, __path__)
