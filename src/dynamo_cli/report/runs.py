"""Reading a multirun dir's train runs: each run's config.yaml, metrics.jsonl, eval.json and Hydra overrides.

A run without `eval.json` did not finish; it is kept (and listed on its own) but never enters a mean.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dynamo_cli.report.labels import label_budgets, label_by_what_varies, method_label


@dataclass
class EvalPoint:
    """One eval record of metrics.jsonl: where the run stood (budget spent) and what it scored."""

    step: int
    rollouts: int
    tokens: int
    seconds: float
    metrics: dict[str, float]  # eval/... keys without the prefix: greedy_pass1, pass@1, L3/pass@1, ...


@dataclass
class Run:
    path: Path
    allocator: str
    modulator: str
    seed: int
    steps: int  # trainer.steps the run was configured for
    finished: bool  # eval.json exists: the run reached its end
    final: dict[str, float] = field(default_factory=dict)  # eval.json "overall": greedy, mean@n, pass@k
    final_levels: dict[str, dict[str, float]] = field(default_factory=dict)  # eval.json "levels"
    config: dict = field(default_factory=dict)  # the run's resolved config
    evals: list[EvalPoint] = field(default_factory=list)
    last_step: int = 0  # last step logged in metrics.jsonl
    rollouts: int = 0  # rollouts generated over the run
    tokens: int = 0  # completion tokens generated over the run
    seconds: float = 0.0  # summed step time (eval excluded)
    budget: str = ""  # "n=2": set by find_runs when the runs' budgets differ, so each budget is its own group
    overrides: dict[str, str] = field(default_factory=dict)  # the job's command-line overrides (.hydra/overrides.yaml)
    label: str | None = None  # the method's name from what varies across the sweep (`label_by_what_varies`)

    @property
    def method(self) -> str:
        return (self.label or method_label(self.allocator, self.modulator)) + (f" @ {self.budget}" if self.budget else "")

    def final_metric(self, metric: str) -> float | None:
        """metric as named in eval records (greedy_pass1, pass@1, pass@4, mean@n) from eval.json."""
        return self.final.get("greedy" if metric == "greedy_pass1" else metric)


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
    return records


def _run_config(path: Path) -> dict | None:
    """The run's resolved config.yaml; Hydra's own .hydra/config.yaml if the run died before writing it."""
    for candidate in (path / "config.yaml", path / ".hydra" / "config.yaml"):
        if candidate.is_file():
            return yaml.safe_load(candidate.read_text())
    return None


def is_train_run(path: Path) -> bool:
    """A `dynamo train` run dir: its config names an allocator and a modulator (sft/eval runs do not)."""
    config = _run_config(path)
    return (isinstance(config, dict) and isinstance(config.get("allocator"), dict) and isinstance(config.get("modulator"), dict)
            and isinstance(config["allocator"].get("name"), str) and isinstance(config["modulator"].get("name"), str))


def load_run(path: Path) -> Run:
    path = Path(path)
    config = _run_config(path)
    if config is None:
        raise FileNotFoundError(f"{path} holds no config.yaml: not a run dir")
    run = Run(path=path, allocator=config["allocator"]["name"], modulator=config["modulator"]["name"],
              seed=int(config["seed"]), steps=int(config["trainer"]["steps"]), finished=(path / "eval.json").is_file(),
              config=config)
    for record in _read_jsonl(path / "metrics.jsonl"):
        run.last_step = max(run.last_step, int(record.get("step", 0)))
        if "rollout/total_rollouts" in record:
            run.rollouts = int(record["rollout/total_rollouts"])
            run.tokens = int(record["rollout/total_tokens"])
            run.seconds = float(record.get("time/elapsed_s", 0.0))
        if any(key.startswith("eval/") for key in record):
            run.evals.append(EvalPoint(step=int(record["step"]), rollouts=int(record.get("rollout/total_rollouts", 0)),
                                       tokens=int(record.get("rollout/total_tokens", 0)),
                                       seconds=float(record.get("time/elapsed_s", 0.0)),
                                       metrics={k[len("eval/"):]: v for k, v in record.items() if k.startswith("eval/")}))
    overrides_file = path / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        run.overrides = dict(o.split("=", 1) for o in yaml.safe_load(overrides_file.read_text()) or [] if "=" in o)
    if run.finished:
        result = json.loads((path / "eval.json").read_text())
        run.final, run.final_levels = result["overall"], result.get("levels", {})
    return run


def find_runs(root: Path) -> list[Run]:
    """Every train run under `root` (a multirun dir: `<root>/<job>/config.yaml`, any depth), in job order."""
    root = Path(root)
    dirs = {p.parent.parent if p.parent.name == ".hydra" else p.parent for p in root.rglob("config.yaml")}
    # W&B keeps a config.yaml of its own in every offline run (<run>/wandb/offline-run-*/files/)
    dirs = [d for d in dirs if "wandb" not in d.relative_to(root).parts and is_train_run(d)]

    def natural(path: Path):  # job 10 after job 9
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]

    return label_budgets(label_by_what_varies([load_run(d) for d in sorted(dirs, key=natural)]))


def unfinished(runs: Sequence[Run]) -> list[Run]:
    return [r for r in runs if not r.finished]
