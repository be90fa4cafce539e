"""The non-finite guard: an optimiser step whose loss or gradient norm is NaN/Inf is skipped, not taken.

AdamW fed one NaN gradient writes NaN into its moments and every weight it touches, and every later checkpoint
inherits them. So `update` asks the guard before each optimiser step (one mini-batch update of every active
Trainable): a finite step goes ahead; a non-finite one leaves weights, Adam state and schedule untouched, its
gradients are dropped, and it is counted (`train/skipped_steps`, cumulative over the run) with its cause. More
than `trainer.max_skipped_steps` skipped in a row stops the run with one line naming the step: by then the
policy (or the data) is broken, and skipping on would only hide it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from dynamo_cli.errors import DynamoError


def nonfinite_cause(*, loss_finite: bool, grad_norms: dict[str, float]) -> Optional[str]:
    """Why an optimiser step must be skipped (None: it may go ahead). `loss_finite`: every micro-batch's loss on
    every process was finite; `grad_norms`: each active module's global gradient norm before clipping."""
    causes = [] if loss_finite else ["loss"]
    causes += [f"{name} grad norm {norm}" for name, norm in grad_norms.items() if not math.isfinite(norm)]
    return None if not causes else "non-finite " + ", ".join(causes)


@dataclass
class NonFiniteGuard:
    max_in_a_row: int  # trainer.max_skipped_steps
    skipped: int = 0  # optimiser steps skipped so far in the run (train/skipped_steps)
    in_a_row: int = 0  # consecutive skipped optimiser steps, across RL steps
    causes: list[str] = field(default_factory=list)  # this RL step's skips, for the log line (reset by `take_causes`)

    def allow(self, *, step: int, update: int, loss_finite: bool, grad_norms: dict[str, float]) -> bool:
        """True: take the optimiser step. False: skip it (counted). Raises after too many skips in a row."""
        cause = nonfinite_cause(loss_finite=loss_finite, grad_norms=grad_norms)
        if cause is None:
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        self.causes.append(f"update {update}: {cause}")
        if self.in_a_row > self.max_in_a_row:
            raise DynamoError(f"step {step} (update {update}): {self.in_a_row} optimiser steps in a row had a {cause}, more "
                              f"than trainer.max_skipped_steps={self.max_in_a_row}; the weights are those of the last finite step")
        return False

    def take_causes(self) -> list[str]:
        causes, self.causes = self.causes, []
        return causes

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped, self.in_a_row = state["skipped"], state["in_a_row"]
