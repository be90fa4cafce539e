"""A reasoning-gym scoring worker (task=reasoning_gym, tasks/reasoning_gym.py): a generator's own `score_answer`, run in a
process the trainer kills when it runs past the verification's deadline (verify/worker.py).

    python -m dynamo_cli.verify.reasoning_gym_worker '{"chain_sum": {"seed": 7, "size": 2400, "max_terms": 3}}'

builds each named generator with those keys (as the task did), says {"ready": true}, then answers one request per stdin
line: {"dataset", "entry" (the problem's reasoning-gym item, pickled and base64-encoded: its metadata keeps its Python
types), "answers": [what the completion answered; several \\boxed{} give several]} -> {"score": the lowest of their
scores} or {"error": "<why>"}. Every boxed answer must hold the answer, as in tasks/answers.py's judge.

It imports reasoning-gym and dynamo's worker protocol only: importing dynamo's tasks package would load torch too, which
doubled a worker's start-up time and memory here.
"""
from __future__ import annotations

import base64
import json
import os
import pickle
import sys

from dynamo_cli.verify.worker import die_with_parent


def encode_entry(entry: dict) -> str:
    """A reasoning-gym item as the wire carries it (pickle: a JSON round trip would turn its tuples into lists)."""
    return base64.b64encode(pickle.dumps(entry)).decode("ascii")


def score(datasets: dict, request: dict) -> float:
    """The lowest score_answer over the request's answers (an empty list scores 0)."""
    dataset = datasets[request["dataset"]]
    entry = pickle.loads(base64.b64decode(request["entry"]))  # written by this trainer's own process, never by a user
    return min((float(dataset.score_answer(answer, entry)) for answer in request["answers"]), default=0.0)


def serve(spec: str) -> None:
    die_with_parent()  # a hung scorer must not outlive a trainer killed with SIGKILL
    out = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol's channel; whatever a generator prints goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(message: dict) -> None:
        out.write(json.dumps(message) + "\n")

    try:
        import reasoning_gym

        datasets = {name: reasoning_gym.create_dataset(name, **keys) for name, keys in json.loads(spec).items()}
    except BaseException as error:  # noqa: B902 - whatever stops the worker is reported, one line
        send({"fatal": f"{type(error).__name__}: {error}"})
        return
    send({"ready": True})
    for line in sys.stdin:
        try:
            send({"score": score(datasets, json.loads(line))})
        except Exception as error:
            send({"error": f"{type(error).__name__}: {error}"[:500]})


if __name__ == "__main__":
    serve(sys.argv[1])
