"""Confidence intervals over seeds and the power of paired comparisons: pure functions of numbers.

A method's value is the mean over its seeds with a 95% Student-t interval mean ± t_{0.975, n-1} · s / √n
(s the sample standard deviation). With 3 seeds t = 4.303, so intervals are wide on purpose: 3 seeds cannot
support strong claims, and the page says so rather than hiding it.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def t_quantile(p: float, df: float) -> float:
    """Inverse Student-t CDF: t_{0.975, 2} = 4.303."""
    if not 0 < p < 1 or df <= 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    from scipy.stats import t  # about a second to import: paid only when an interval is computed

    return float(t.ppf(p, df))


@dataclass
class Interval:
    """A mean over seeds with its 95% half-width (None with fewer than two values: no interval exists)."""

    mean: float
    half_width: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def overlaps(self, other: Interval) -> bool | None:
        if self.half_width is None or other.half_width is None:
            return None
        return self.low <= other.high and other.low <= self.high

    def excludes_zero(self) -> bool | None:
        return None if self.half_width is None else (self.low > 0 or self.high < 0)

    def format(self, digits: int = 3) -> str:
        if self.n == 0:
            return "–"
        if self.half_width is None:
            return f"{self.mean:,.{digits}f} (CI n/a)"
        return f"{self.mean:,.{digits}f} ± {self.half_width:,.{digits}f}"


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """mean ± t_{(1+level)/2, n-1} · s / √n over the values (seeds). Known values: [1, 2, 3] -> 2 ± 2.484."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return Interval(mean=float("nan"), half_width=None, n=0)
    mean = sum(values) / n
    if n == 1:
        return Interval(mean=mean, half_width=None, n=1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean=mean, half_width=t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n), n=n)


def paired_difference(differences: Sequence[float]) -> tuple[Interval, float | None]:
    """The per-seed differences' mean with its 95% CI, and their standard deviation (None with < 2 seeds)."""
    sd = statistics.stdev(differences) if len(differences) >= 2 else None
    return mean_ci(differences), sd


def minimum_detectable_difference(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest true paired difference a two-sided paired t-test over n seeds detects with probability `power`
    at level `alpha`, given the seeds' standard deviation of the differences: (t_{1-α/2, n-1} + t_{power, n-1})·sd/√n.
    None with fewer than two seeds. Known value: sd 0.02, n 3 -> (4.303 + 1.061)·0.02/√3 = 0.0619."""
    if n < 2:
        return None
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def seeds_to_detect(sd: float, difference: float, *, alpha: float = 0.05, power: float = 0.8, most: int = 1000) -> int | None:
    """The fewest seeds whose minimum detectable difference is <= `difference` at this sd (None beyond `most`)."""
    for n in range(2, most + 1):
        if minimum_detectable_difference(sd, n, alpha=alpha, power=power) <= difference:
            return n
    return None
