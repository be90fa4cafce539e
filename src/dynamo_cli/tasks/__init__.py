"""Tasks: prompts, demonstrations and verifiers."""

from dynamo_cli.tasks.base import Problem, Task, TaskError
from dynamo_cli.tasks.calc import CalcTask
from dynamo_cli.tasks.chat_jsonl import ChatJsonlTask
from dynamo_cli.tasks.code import CodeProblem, CodeTask
from dynamo_cli.tasks.environment import Environment, EnvironmentTask
from dynamo_cli.tasks.guess import GuessTask
from dynamo_cli.tasks.jsonl import JsonlTask
from dynamo_cli.tasks.math import MathTask

__all__ = ["Problem", "Task", "TaskError", "MathTask", "JsonlTask", "CodeProblem", "CodeTask", "Environment", "EnvironmentTask",
           "CalcTask", "GuessTask", "ChatJsonlTask"]
