"""Tasks: prompts, demonstrations and verifiers. One module per task, registered in TASKS (base.py) by its schema
(config/task.py); environments (multi-turn tasks) build on environment.py, answer extraction lives in answers.py."""
from dynamo_cli.registry import import_all

import_all(__name__, __path__)
