"""``TrainState``: where a training run is, what it has logged, and what callbacks asked for."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class TrainState:
    """The position of a run and its logs; saved in checkpoints, so a resumed run continues from it.

    ``epoch`` is the current epoch (0-based) while training and the number of epochs done at an
    epoch boundary; ``batch`` the batches done in the current epoch; ``step`` the optimiser steps
    done. Callbacks request things through it (``should_stop``) instead of steering the loop."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    total_steps: int = 0
    steps_per_epoch: int = 0
    batch_size: int = 0  # the global batch (all processes together)
    micro_batch_size: int = 0  # per forward pass on one process; halved on out-of-memory
    epoch_losses: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped_steps: int = 0
    should_stop: bool = False
    frozen_groups: int = 0  # layer groups frozen in the current epoch (set by the freezing callback)
    score: float | None = None  # this epoch's selection score, higher is better (set at validation)

    @property
    def progress(self) -> float:
        """Fraction of all optimiser steps done, 0..1."""
        return self.step / max(1, self.total_steps)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, d: dict[str, Any]) -> None:
        for f in fields(self):
            if f.name in d:
                setattr(self, f.name, d[f.name])
