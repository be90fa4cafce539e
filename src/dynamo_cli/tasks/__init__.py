"""Tasks: prompts, demonstrations and verifiers."""

from dynamo_cli.tasks.base import Problem, Task, TaskError
from dynamo_cli.tasks.code import CodeProblem, CodeTask
from dynamo_cli.tasks.jsonl import JsonlTask
from dynamo_cli.tasks.math import MathTask

__all__ = ["Problem", "Task", "TaskError", "MathTask", "JsonlTask", "CodeProblem", "CodeTask"]
