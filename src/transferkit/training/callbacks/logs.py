"""The run folder's logs: ``metrics.jsonl`` (one line per epoch) and ``steps.jsonl`` (one line per
optimiser step: its loss and a hash of the samples it saw). Written by the main process only; on
resume both are cut back to the checkpoint's position, so they read as an uninterrupted run's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .. import rundir
from .base import Callback, register_callback


def _truncate_jsonl(path: Path, keep: int) -> None:
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)[:keep]
        path.write_text("".join(lines))


@register_callback("jsonl_logs")
class JsonlLogger(Callback):
    order = 70

    def __init__(self, run_dir: str | Path, resume: bool = False):
        self.run_dir, self.resume = Path(run_dir), resume
        self.metrics, self.steps = self.run_dir / "metrics.jsonl", self.run_dir / "steps.jsonl"

    def on_fit_start(self, trainer) -> None:
        if not trainer.runtime.is_main:
            return
        folder = rundir.opened(self.run_dir)
        if folder is not None:
            folder.begin()  # an earlier run in this folder (--overwrite) is replaced only now
        if self.resume:
            _truncate_jsonl(self.metrics, len(trainer.state.history))
            _truncate_jsonl(self.steps, trainer.state.step)
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.metrics.write_text("")
            self.steps.write_text("")

    def on_step_end(self, trainer, loss: float) -> None:
        if trainer.runtime.is_main:
            st = trainer.state
            order = hashlib.sha1(trainer.batch_index.numpy().tobytes()).hexdigest()[:12]
            with open(self.steps, "a") as fh:
                fh.write(json.dumps({"step": st.step, "epoch": st.epoch + 1, "batch": st.batch, "loss": loss, "samples": order}) + "\n")

    def on_epoch_end(self, trainer, record: dict[str, Any]) -> None:
        if trainer.runtime.is_main:
            with open(self.metrics, "a") as fh:
                fh.write(json.dumps(record) + "\n")
