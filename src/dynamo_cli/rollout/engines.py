"""The `rollout` group: the engine that generates a step's completions (protocols.RolloutEngine). hf.py generates with
the policy itself in this process; vllm.py with a vLLM engine that holds a copy of the weights. Each registers here
with its schema (config/rollout.py)."""
from dynamo_cli.registry import Registry

ROLLOUT_ENGINES = Registry("rollout")
