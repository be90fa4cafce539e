"""eval schemas."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from dynamo_cli.config.base import check, check_batch_size, positive


# ------------------------------------------------------------------------------------ evaluation
@dataclass
class EvalSettings:
    n_samples: int = 8  # sampled completions per test problem (for mean@n and pass@k); 0 = greedy only
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: Optional[int] = None  # None: the task's max_new_tokens
    ks: list[int] = field(default_factory=lambda: [1, 4, 8])  # pass@k reported for each k <= n_samples
    max_problems: Optional[int] = None  # evaluate on N test problems, spread evenly over the levels (None: all)
    batch_size: Any = "auto"  # sequences generated at once; auto: as many as fit in memory

    def __post_init__(self) -> None:
        positive("eval.n_samples", self.n_samples, strict=False)
        positive("eval.temperature", self.temperature)
        check(0 < self.top_p <= 1, f"eval.top_p={self.top_p} must be in (0, 1]")
        for k in self.ks:
            check(k >= 1, f"eval.ks contains {k}; every k must be >= 1")
        if self.max_problems is not None:
            positive("eval.max_problems", self.max_problems)
        check_batch_size("eval.batch_size", self.batch_size)
