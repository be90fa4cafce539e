"""What each run is called and which group it is averaged in: method labels, budgets, groups.

A group is one method at one budget; only a budget sweep puts the budget in the name ("grpo @ n=2").
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dynamo_cli.report.runs import Run

# (allocator, modulator) -> the method's name in the ablation; other pairs are called "<allocator>+<modulator>"
METHOD_LABELS = {
    ("uniform", "none"): "grpo",
    ("variance", "none"): "allocation only",
    ("uniform", "dynamo"): "modulation only",
    ("variance", "dynamo"): "dynamo",
}
BASELINE = "grpo"
BUDGET_KEYS = ("rollout.n", "trainer.prompts_per_step", "trainer.steps")  # named by label_budgets, not in the label


def method_label(allocator: str, modulator: str) -> str:
    return METHOD_LABELS.get((allocator, modulator), f"{allocator}+{modulator}")


def method_order(label: str) -> tuple[int, str]:
    """The ablation's methods first, in the order of the paper's table; anything else after, by name."""
    known = list(METHOD_LABELS.values())
    return (known.index(label), "") if label in known else (len(known), label)


def n_seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def budget_of(run: Run) -> tuple[int, int, int]:
    """(rollout.n, trainer.prompts_per_step, trainer.steps): equal for every run of a matched-budget sweep."""
    return (int(run.config["rollout"]["n"]), int(run.config["trainer"]["prompts_per_step"]), int(run.config["trainer"]["steps"]))


def budgets(runs: Sequence[Run]) -> dict[tuple[int, int, int], list[Run]]:
    out: dict[tuple[int, int, int], list[Run]] = {}
    for run in runs:
        out.setdefault(budget_of(run), []).append(run)
    return out


def label_budgets(runs: list[Run]) -> list[Run]:
    """When the runs' budgets differ (a budget sweep), name each run's budget by the parts that vary
    ("n=2", "n=2, P=64"): a method at one budget is then a group of its own, contrasted with GRPO at that budget."""
    if len(budgets(runs)) > 1:
        varying = [i for i in range(3) if len({budget_of(r)[i] for r in runs}) > 1]
        for run in runs:
            run.budget = ", ".join(f"{('n', 'P', 'steps')[i]}={budget_of(run)[i]}" for i in varying)
    return runs


def label_by_what_varies(runs: list[Run]) -> list[Run]:
    """Name each run's method by the overrides that differ between runs, seed and budget aside: `experiment=dapo`
    across presets gives "dapo" (one varying key: its value), several keys give "k=v k=v". When only allocator and
    modulator vary (the ablation), or nothing does, the ablation's names stay (METHOD_LABELS): two presets with
    the same allocator and modulator (grpo, clip_higher) are then still told apart. Sets Run.label in place."""
    keys = list(dict.fromkeys(k for run in runs for k in run.overrides))
    varying = [k for k in keys if k != "seed" and k not in BUDGET_KEYS and len({run.overrides.get(k) for run in runs}) > 1]
    if not varying or set(varying) <= {"allocator", "modulator"}:
        return runs
    for run in runs:
        values = [(k, run.overrides.get(k, "-")) for k in varying]
        run.label = values[0][1] if len(values) == 1 else " ".join(f"{k}={v}" for k, v in values)
    return runs


def group_by_method(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Runs by method name, ordered by budget, then the ablation's order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.method, []).append(run)
    return dict(sorted(groups.items(), key=lambda item: (budget_of(item[1][0]) if item[1][0].budget else (),
                                                          method_order(item[0].split(" @ ")[0]))))
