"""allocator=uniform: n rollouts for every prompt, GRPO's allocation (Shao et al. 2024, arXiv 2402.03300), the
baseline DynaMO's allocation is compared with. The success history is still kept, so GRPO runs report the same
evidence (logs, the live table, alloc/history_coverage) as DynaMO runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dynamo_cli.allocation.base import ALLOCATORS, Allocation, AllocatorConfig, HistoryAllocator, count_metrics
from dynamo_cli.allocation.maths import uniform_rollouts


@dataclass
class UniformAllocatorConfig(AllocatorConfig):
    """n rollouts for every prompt (GRPO); the history only feeds logs, the live table and alloc/history_coverage."""

    name: str = "uniform"


@ALLOCATORS.register("uniform", schema=UniformAllocatorConfig)
class UniformAllocator(HistoryAllocator):
    """n rollouts per prompt. Still records each prompt's success history (for logs, display and the
    alloc/history_coverage metric, so GRPO runs report the same evidence as DynaMO runs)."""

    def allocate(self, prompt_ids: list[str], *, tags: list[str] | None = None) -> Allocation:
        if not prompt_ids:
            raise ValueError("allocate needs at least one prompt")
        counts = uniform_rollouts(len(prompt_ids), self.n)
        rows = self._rows(prompt_ids)
        metrics = count_metrics(counts) | {"alloc/history_coverage": self._coverage(rows)}
        return Allocation(counts=counts, priority=torch.ones(len(prompt_ids)), metrics=metrics)
