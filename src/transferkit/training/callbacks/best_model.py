"""Keep the weights of the best epoch (by the selection score) and restore them at the end."""

from __future__ import annotations

from typing import Any

from .base import Callback, register_callback


@register_callback("best_model")
class BestModel(Callback):
    order = 20  # after the score is set at validation (adaptation: 5)

    def __init__(self):
        self.score: float | None = None
        self.epoch = -1
        self.weights: dict[str, Any] | None = None

    def on_validation(self, trainer, record: dict[str, Any]) -> None:
        score = trainer.state.score
        if score is not None and (self.score is None or score > self.score):
            self.score, self.epoch = score, trainer.state.epoch + 1
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in trainer.model.state_dict().items()}

    def on_fit_end(self, trainer) -> None:
        if self.weights is None:
            return
        trainer.model.load_state_dict(self.weights)
        if trainer.selection is not None:  # model selection by another score than a validation metric
            trainer.state.history.append({"best_epoch": self.epoch, "selection": trainer.selection, "best_selection_score": self.score})
        else:
            name, higher = trainer.metric
            trainer.state.history.append({"best_epoch": self.epoch, f"best_val_{name}": self.score if higher else -self.score})

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"score": self.score, "epoch": self.epoch}
        if self.weights is not None:
            out["tensors"] = {"best": self.weights}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.score, self.epoch = state.get("score"), state.get("epoch", -1)
        self.weights = (state.get("tensors") or {}).get("best")
