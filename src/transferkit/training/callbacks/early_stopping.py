"""Stop when the selection score has not improved for ``patience`` epochs (0: never)."""

from __future__ import annotations

from typing import Any

from .base import Callback, register_callback


@register_callback("early_stopping")
class EarlyStopping(Callback):
    order = 25

    def __init__(self, patience: int):
        self.patience = patience
        self.best: float | None = None
        self.wait = 0

    def on_validation(self, trainer, record: dict[str, Any]) -> None:
        score = trainer.state.score
        if score is None:
            return
        if self.best is None or score > self.best:
            self.best, self.wait = score, 0
        else:
            self.wait += 1
        if self.patience and self.wait >= self.patience:
            trainer.state.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state.get("best"), state.get("wait", 0)
