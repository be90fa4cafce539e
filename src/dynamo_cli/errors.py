"""The error a user can fix. Library modules raise it; the CLI (the edge) prints it as one line, exit 2."""
from __future__ import annotations


class DynamoError(Exception):
    """An error the user can fix (bad input, missing file). Printed as one line, exit code 2."""


def warn(message: str) -> None:
    """One warning line on stderr, from the process that speaks for the run (rank 0 of several)."""
    import os
    import sys

    if os.environ.get("RANK", "0") == "0":
        print(f"dynamo: warning: {message}", file=sys.stderr, flush=True)


class Preempted(Exception):
    """The run was asked to stop (trainer.preempt_signals) and left a checkpoint: the CLI exits with `exit_code`
    (trainer.preempt_exit_code), which a SLURM requeue treats as "requeue me", not as a failure."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
