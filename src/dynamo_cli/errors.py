"""The error a user can fix. Library modules raise it; the CLI (the edge) prints it as one line, exit 2."""
from __future__ import annotations


class DynamoError(Exception):
    """An error the user can fix (bad input, missing file). Printed as one line, exit code 2."""
