"""Rollouts: the engines that generate completions (hf, vllm), episodes (one completion, or a dialogue with an
environment), the trajectories the update trains on, and the policy's per-token statistics."""
from dynamo_cli.registry import import_all

import_all(__name__, __path__)
