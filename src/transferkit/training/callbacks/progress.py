"""A rich progress bar over the training steps (main process only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Callback, register_callback


def progress_bar(enabled: bool):
    """A rich progress bar (tasks take an ``info`` field), or a no-op stand-in."""
    if not enabled:
        return _NullBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False,
    )


class _NullBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass


@register_callback("progress_bar")
class ProgressBar(Callback):
    order = 75

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar: Any = None
        self.task = 0

    def on_fit_start(self, trainer) -> None:
        self.bar = progress_bar(self.enabled and trainer.runtime.is_main).__enter__()
        self.task = self.bar.add_task("train", total=trainer.state.total_steps, info="", completed=trainer.state.step)

    def on_step_end(self, trainer, loss: float) -> None:
        st = trainer.state
        self.bar.update(self.task, advance=1, info=f"epoch {st.epoch + 1}/{trainer.cfg.epochs} loss {np.mean(st.epoch_losses):.3f}")

    def on_epoch_end(self, trainer, record: dict[str, Any]) -> None:
        name = trainer.metric[0]
        shown = f" val {name} {record[f'val_{name}']:.3f}" if f"val_{name}" in record else ""
        if "selection_score" in record:
            shown += f" select {record['selection_score']:.3f}"
        self.bar.update(self.task, info=f"epoch {record['epoch']}/{trainer.cfg.epochs} loss {record['train_loss']:.3f}{shown}")
        if trainer.state.should_stop:
            self.bar.update(self.task, completed=trainer.state.total_steps)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def on_fit_end(self, trainer) -> None:
        self._close()

    def on_exception(self, trainer, exc: BaseException) -> None:
        self._close()
