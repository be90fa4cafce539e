"""Each method against the baseline (GRPO, or the sweep preset's `baseline`), paired by seed: same seed = same prompt order and eval draws."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dynamo_cli.report.labels import BASELINE, group_by_method
from dynamo_cli.report.runs import Run
from dynamo_cli.report.stats import Interval, minimum_detectable_difference, paired_difference


@dataclass
class Contrast:
    """method − baseline in a final metric, paired by seed."""

    method: str
    baseline: str
    seeds: list[int]
    difference: Interval
    sd: float | None = None  # standard deviation of the paired differences over seeds (None with < 2)

    @property
    def mdd(self) -> float | None:
        """Minimum detectable difference (α 0.05 two-sided, power 0.8) at this contrast's seeds and spread."""
        return None if self.sd is None else minimum_detectable_difference(self.sd, len(self.seeds))


def paired_contrasts(runs: Sequence[Run], metric: str, baseline: str = BASELINE) -> list[Contrast]:
    """Each method against the baseline at the same budget (a budget sweep contrasts within each budget)."""
    grouped = group_by_method(runs)
    groups = {m: {r.seed: r for r in members if r.finished} for m, members in grouped.items()}
    out = []
    for method, by_seed in groups.items():
        budget = grouped[method][0].budget
        base = baseline + (f" @ {budget}" if budget else "")
        if method == base or base not in groups:
            continue
        seeds = sorted(set(by_seed) & set(groups[base]))
        difference, sd = paired_difference([by_seed[s].final_metric(metric) - groups[base][s].final_metric(metric)
                                            for s in seeds])
        out.append(Contrast(method=method, baseline=base, seeds=seeds, difference=difference, sd=sd))
    return out
