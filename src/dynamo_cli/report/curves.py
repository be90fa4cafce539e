"""Learning curves: each method's test metric against budget spent, averaged over its finished seeds."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dynamo_cli.report.labels import group_by_method
from dynamo_cli.report.runs import Run

X_AXES = {"rollouts": "rollouts generated", "tokens": "completion tokens generated", "seconds": "train wall-clock seconds (eval excluded)"}


@dataclass
class Curve:
    """A method's test metric against budget spent: mean over seeds and the seeds' min–max band."""

    method: str
    seeds: int
    x: list[float]  # mean over seeds of the x value at each eval step
    mean: list[float]
    low: list[float]
    high: list[float]


def learning_curves(runs: Sequence[Run], *, x: str, metric: str) -> list[Curve]:
    """Align each method's finished seeds by eval step (they share the eval cadence) and average.

    At a matched budget the rollouts at a step are equal across seeds; tokens and seconds are not, so the
    x value is the seeds' mean at that step. Steps that some seed lacks are dropped.
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {tuple(X_AXES)}, got {x!r}")
    curves = []
    for method, members in group_by_method(runs).items():
        done = [r for r in members if r.finished]
        if not done:
            continue
        by_step = [{p.step: p for p in r.evals if metric in p.metrics} for r in done]
        steps = sorted(set.intersection(*(set(s) for s in by_step)))
        if not steps:
            continue
        xs, means, lows, highs = [], [], [], []
        for step in steps:
            points = [s[step] for s in by_step]
            ys = [p.metrics[metric] for p in points]
            xs.append(sum(getattr(p, x) for p in points) / len(points))
            means.append(sum(ys) / len(ys))
            lows.append(min(ys))
            highs.append(max(ys))
        curves.append(Curve(method=method, seeds=len(done), x=xs, mean=means, low=lows, high=highs))
    return curves
