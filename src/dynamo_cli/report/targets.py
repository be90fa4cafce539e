"""Budget to reach a target test metric: the first eval at or above it, per seed, averaged over the seeds that did."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dynamo_cli.report.labels import group_by_method
from dynamo_cli.report.runs import EvalPoint, Run
from dynamo_cli.report.stats import Interval, mean_ci

TARGET_COLUMNS = ["method", "seeds reaching", "rollouts to target", "tokens to target", "train s to target"]


@dataclass
class TargetRow:
    method: str
    reached: int  # seeds whose test metric reached the target at some eval
    seeds: int  # finished seeds
    rollouts: Interval  # over the seeds that reached it
    tokens: Interval
    seconds: Interval


def first_reaching(run: Run, *, metric: str, target: float) -> EvalPoint | None:
    """The first eval record whose metric is >= target (None: never reached)."""
    return next((p for p in sorted(run.evals, key=lambda p: p.step) if p.metrics.get(metric, -1.0) >= target), None)


def initial_value(runs: Sequence[Run], metric: str) -> float | None:
    """Mean of the step-0 eval (the shared starting checkpoint) over finished runs."""
    values = [p.metrics[metric] for r in runs if r.finished for p in r.evals if p.step == 0 and metric in p.metrics]
    return sum(values) / len(values) if values else None


def default_target(runs: Sequence[Run], metric: str, fraction: float = 0.9) -> float | None:
    """90% of the way from the starting metric to the best method's final mean.

    A fraction of the *gain* rather than of the final value: the SFT start can already sit above 90% of
    the final value, and then every method would "reach" the target at step 0.
    """
    finals = [r.final_metric(metric) for r in runs if r.finished and r.final_metric(metric) is not None]
    if not finals:
        return None
    best = max(mean_ci([r.final_metric(metric) for r in members if r.finished]).mean
               for members in group_by_method(runs).values() if any(r.finished for r in members))
    start = initial_value(runs, metric)
    return best * fraction if start is None else start + fraction * (best - start)


def rollouts_to_target(runs: Sequence[Run], *, metric: str, target: float) -> list[TargetRow]:
    rows = []
    for method, members in group_by_method(runs).items():
        done = [r for r in members if r.finished]
        hits = [p for p in (first_reaching(r, metric=metric, target=target) for r in done) if p is not None]
        rows.append(TargetRow(method=method, reached=len(hits), seeds=len(done), rollouts=mean_ci([p.rollouts for p in hits]),
                              tokens=mean_ci([p.tokens for p in hits]), seconds=mean_ci([p.seconds for p in hits])))
    return rows


def target_cells(row: TargetRow) -> list[str]:
    return [row.method, f"{row.reached}/{row.seeds}", row.rollouts.format(0), row.tokens.format(0), row.seconds.format(0)]
