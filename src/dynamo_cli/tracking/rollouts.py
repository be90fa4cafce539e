"""rollouts.jsonl (trainer.dump_rollouts): one line per completion, so anyone can re-check every reward and every
allocation."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from torch import Tensor

from dynamo_cli.runtime.distributed import DataParallel
from dynamo_cli.stages.collect import Collected
from dynamo_cli.tasks.answers import RULES
from dynamo_cli.tracking.tracker import truncate_jsonl

ROLLOUTS_FILE = "rollouts.jsonl"


class RolloutDump:
    """Appends each step's completions, every process's, to `<run dir>/rollouts.jsonl` (rank 0 writes). On a resume,
    the lines of steps after the checkpoint's go first: those steps are about to run again."""

    def __init__(self, run_dir: Path, *, dp: DataParallel, resume_step: Optional[int]):
        self.dp = dp
        self.path = Path(run_dir) / ROLLOUTS_FILE if dp.is_main else None
        if self.path and resume_step is not None:
            truncate_jsonl(self.path, max_step=resume_step)

    def __call__(self, step: int, data: Collected, *, advantages: Tensor) -> None:
        """A collective (every process gathers the texts): every process calls it at the same point."""
        rollouts = data.rollouts
        texts = [text for share in self.dp.gather_objects(rollouts.texts) for text in share]
        transcripts = (None if rollouts.transcripts is None else  # multi-turn: every turn, with who said it
                       [t for share in self.dp.gather_objects(rollouts.transcripts) for t in share])
        if self.path:
            dump_rollouts(self.path, step=step, problems=data.problems, prompts=data.prompts, prompt_index=data.group_index,
                          texts=texts, rewards=data.rewards, rules=data.rules, counts=data.allocation.counts, advantages=advantages,
                          transcripts=transcripts)


def dump_rollouts(path: Path, *, step: int, problems, prompts, prompt_index, texts, rewards, rules, counts, advantages,
                  transcripts=None) -> None:
    """One line per completion: anyone can re-check every reward and every allocation. Multi-turn rollouts add
    `turns`: every turn in order, {"who": "environment" | "policy", "content"}."""
    with path.open("a") as f:
        for r, i in enumerate(prompt_index.tolist()):
            f.write(json.dumps({"step": step, "prompt_id": problems[i].id, "prompt": prompts[i], "completion": texts[r],
                                "answer": problems[i].answer, "reward": float(rewards[r]), "rule": RULES[rules[r]], "n_alloc": int(counts[i]),
                                "advantage": float(advantages[r]), **({} if transcripts is None else {"turns": transcripts[r]})}) + "\n")
