"""One RL step's record in metrics.jsonl: rollout/..., train/..., alloc/..., dist/..., time/... and the modulation's quantiles."""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from dynamo_cli.runtime.distributed import DataParallel
from dynamo_cli.stages.collect import Collected
from dynamo_cli.tasks.answers import RULES
from dynamo_cli.tracking.tracker import quantiles


def step_metrics(data: Collected, *, dp: DataParallel, totals: dict[str, Any], step: int, step_start: float, zero_signal: Tensor,
                 update_metrics: dict[str, float], distributions: dict[str, Tensor], replicas: dict[str, float],
                 alloc_seconds: float, update_seconds: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the step's metrics, the run's totals after it). A collective (lengths, entropy: every process's rows): every
    process calls it at the same point. The step's time ends here, after those collectives; `distributions` (the
    modulation's and the allocation's) add their quantiles."""
    rollouts, rewards = data.rollouts, data.rewards
    lengths, finished = dp.gather_rows(rollouts.completion_lengths), dp.gather_rows(rollouts.finished)
    entropy_sum = dp.sum(float((data.batch.old_entropy * rollouts.policy_tokens).sum()))  # policy tokens only
    generated_tokens = int(lengths.sum())
    step_seconds = time.perf_counter() - step_start
    totals = {"step": step, "rollouts": totals["rollouts"] + len(rewards),
              "tokens": totals["tokens"] + generated_tokens, "seconds": totals["seconds"] + step_seconds}
    metrics = {
        "rollout/reward_mean": rewards.mean().item(),
        "rollout/pass_rate": (data.successes > 0).float().mean().item(),
        "rollout/zero_signal_frac": zero_signal.float().mean().item(),
        "rollout/zero_signal_groups": int(torch.zeros(len(data.problems)).index_add_(0, data.group_index, zero_signal.float()).gt(0).sum()),
        "rollout/response_length": lengths.float().mean().item(),
        "rollout/truncated_frac": (~finished).float().mean().item(),
        "rollout/count": len(rewards),
        **{f"rollout/extract_{rule}_frac": (data.rules == k).float().mean().item() for k, rule in enumerate(RULES)},
        "rollout/total_rollouts": totals["rollouts"],
        "rollout/total_tokens": totals["tokens"],
        "train/entropy": entropy_sum / max(generated_tokens, 1),
        **data.allocation.metrics,
        **data.metrics,
        **update_metrics,
        **replicas,
        "time/alloc_s": alloc_seconds, "time/generate_s": data.seconds["generate"], "time/score_s": data.seconds["score"],
        "time/update_s": update_seconds, "time/step_s": step_seconds, "time/elapsed_s": totals["seconds"],
        "time/tokens_per_s": generated_tokens / max(data.seconds["generate"], 1e-9),
    }
    for name, values in distributions.items():
        metrics.update(quantiles(name, values))
    return metrics, totals
