"""WorkerSlots (verify/worker.py), the worker pool of task.reward and task=reasoning_gym's scoring: a hung or dead
worker costs its slot one restart, and a pool that cannot start leaves no worker running."""
from __future__ import annotations

import sys

import psutil
import pytest

from dynamo_cli.errors import DynamoError
from dynamo_cli.verify.worker import WorkerSlots

# a worker that answers each request line with {"echo": request}; "hang" never answers, "die" exits
ECHO = """
import json, sys, time
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if request.get("do") == "hang":
        time.sleep(600)
    if request.get("do") == "die":
        sys.exit(3)
    print(json.dumps({"echo": request}), flush=True)
"""
# the first of several to start is ready, the others say why they cannot start
FIRST_ONLY = """
import json, os, sys
try:
    os.close(os.open(sys.argv[1], os.O_CREAT | os.O_EXCL))
    print(json.dumps({"ready": True}), flush=True)
except FileExistsError:
    print(json.dumps({"fatal": "another worker started first"}), flush=True)
sys.stdin.read()
"""


def live_children(marker: str) -> list[psutil.Process]:
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if marker in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


def test_a_hung_or_dead_worker_costs_its_slot_one_restart():
    slots = WorkerSlots([sys.executable, "-c", ECHO], what="echo", count=2)
    try:
        assert slots.ask(0, {"x": 1}, 5.0) == ({"echo": {"x": 1}}, None)
        first = slots.workers[0].proc.pid
        assert slots.ask(0, {"do": "hang"}, 0.3) == (None, "timeout")
        assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE  # killed
        reply, fault = slots.ask(1, {"do": "die"}, 5.0)
        assert reply is None and fault.startswith("EOFError: the worker exited")  # its code, once reaped
        assert slots.ask(0, {"x": 2}, 5.0) == ({"echo": {"x": 2}}, None)  # a fresh worker in each slot
        assert slots.ask(1, {"x": 3}, 5.0) == ({"echo": {"x": 3}}, None)
        assert slots.workers[0].proc.pid != first
    finally:
        slots.close()


def test_a_pool_that_cannot_start_leaves_no_worker_running(tmp_path):
    marker = str(tmp_path / "started")
    with pytest.raises(DynamoError, match="another worker started first"):
        WorkerSlots([sys.executable, "-c", FIRST_ONLY, marker], what="first-only", count=3)
    assert live_children(marker) == []  # the one that did start was killed with the failure
