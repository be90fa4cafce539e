"""A step's completions as rows: rollouts.jsonl (trainer.dump_rollouts), one line per completion, so anyone can re-check
every reward and every allocation; a sample of them in W&B and the best and worst on the terminal, so anyone can read
what the policy writes (trainer.log_completions_every)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from dynamo_cli.runtime.distributed import DataParallel
from dynamo_cli.stages.collect import Collected
from dynamo_cli.tasks.answers import RULES
from dynamo_cli.tracking.tracker import truncate_jsonl

ROLLOUTS_FILE = "rollouts.jsonl"


class RolloutRows:
    """Each step's completions as rows with rollouts.jsonl's keys, every process's, on rank 0 (others get []): appended to
    `<run dir>/rollouts.jsonl` when `write` (trainer.dump_rollouts); a sample goes to W&B and the best and worst to the
    terminal (recipes/train.py). On a resume, the lines of steps after the checkpoint's go first: those steps run again."""

    def __init__(self, run_dir: Path, *, dp: DataParallel, resume_step: Optional[int], write: bool):
        self.dp = dp
        self.path = Path(run_dir) / ROLLOUTS_FILE if dp.is_main and write else None
        if self.path and resume_step is not None:
            truncate_jsonl(self.path, max_step=resume_step)

    def __call__(self, step: int, data: Collected, *, advantages: Tensor) -> list[dict]:
        """A collective (every process gathers the texts): every process calls it at the same point."""
        rollouts = data.rollouts
        texts = [text for share in self.dp.gather_objects(rollouts.texts) for text in share]
        transcripts = (None if rollouts.transcripts is None else  # multi-turn: every turn, with who said it
                       [t for share in self.dp.gather_objects(rollouts.transcripts) for t in share])
        if not self.dp.is_main:
            return []
        rows = rollout_rows(step=step, problems=data.problems, prompts=data.prompts, prompt_index=data.group_index, texts=texts,
                            rewards=data.rewards, rules=data.rules, counts=data.allocation.counts, advantages=advantages,
                            transcripts=transcripts)
        if self.path:
            dump_rollouts(self.path, rows)
        return rows


def rollout_rows(*, step: int, problems, prompts, prompt_index, texts, rewards, rules, counts, advantages,
                 transcripts=None) -> list[dict]:
    """One row per completion: anyone can re-check every reward and every allocation. Multi-turn rollouts add
    `turns`: every turn in order, {"who": "environment" | "policy", "content"}."""
    return [{"step": step, "prompt_id": problems[i].id, "prompt": prompts[i], "completion": texts[r], "answer": problems[i].answer,
             "reward": float(rewards[r]), "rule": RULES[rules[r]], "n_alloc": int(counts[i]), "advantage": float(advantages[r]),
             **({} if transcripts is None else {"turns": transcripts[r]})}
            for r, i in enumerate(prompt_index.tolist())]


def dump_rollouts(path: Path, rows: list[dict]) -> None:
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def sample_rows(rows: list[dict], *, k: int, seed: int, step: int) -> list[dict]:
    """k of the step's rows (all when it has no more), drawn without replacement from a generator seeded by (seed, step),
    in their order: what W&B's completions table shows of a step."""
    if len(rows) <= k:
        return list(rows)
    picks = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed * 1_000_003 + step))[:k]
    return [rows[i] for i in sorted(picks.tolist())]


def best_and_worst(rows: list[dict]) -> list[tuple[str, dict]]:
    """[("best", row), ("worst", row)]: the highest and the lowest reward, ties broken by the advantage (the completion the
    update pushes up most, down most), then by order; [] for no rows. The best is where a hacked reward shows first."""
    if not rows:
        return []
    best = max(rows, key=lambda r: (r["reward"], r["advantage"]))
    worst = min(rows, key=lambda r: (r["reward"], r["advantage"]))
    return [("best", best), ("worst", worst)]
