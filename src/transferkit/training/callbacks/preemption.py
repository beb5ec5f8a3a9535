"""Stop cleanly on SIGTERM/SIGINT: finish the step, write a checkpoint, raise ``Preempted`` (75).

The signal handlers are the run's (``api.fit`` installs them for the whole run) or, for training
alone, this callback's. With several processes they agree on stopping at the same step.
"""

from __future__ import annotations

from typing import Any

from ...errors import Preempted
from .. import preemption
from .base import Callback, register_callback


@register_callback("preemption")
class Preemption(Callback):
    order = 95  # after the step's/epoch's logs and any scheduled checkpoint

    def __init__(self):
        self.stop: preemption.StopSignal | None = None
        self._own = False

    def on_fit_start(self, trainer) -> None:
        self.stop = preemption.active()
        self._own = self.stop is None
        if self._own:  # no handler for the whole run: catch signals only where a checkpoint can go
            self.stop = preemption.StopSignal(enabled=trainer.run_dir is not None).__enter__()
        self.stop.defer()  # from the first step on: finish the step, checkpoint, then stop

    def _signalled(self, trainer) -> bool:
        return trainer.runtime.any(self.stop is not None and self.stop.signal is not None)

    def _raise(self, trainer, where: str) -> None:
        from .checkpointing import Checkpointing

        ck = trainer.callbacks.find(Checkpointing)
        sig = self.stop.signal if self.stop is not None and self.stop.signal is not None else "SIGTERM (another process)"
        if ck is None:
            raise Preempted(f"Stopped by signal {sig} after {where}; nothing was saved (no run folder).",
                            "pass --out RUN_DIR to get a checkpoint you can resume from.")
        path = ck.save(trainer)
        raise Preempted(f"Stopped by signal {sig} after {where}; checkpoint saved to {path}.",
                        f"continue with: transferkit fit DATA --resume {trainer.run_dir}")

    def on_step_end(self, trainer, loss: float) -> None:
        if self._signalled(trainer):
            self._raise(trainer, f"step {trainer.state.step}")

    def on_epoch_end(self, trainer, record: dict[str, Any]) -> None:
        # a signal during validation: stop at the epoch's end (after the last epoch the run saves first)
        st = trainer.state
        if not st.should_stop and st.epoch < trainer.cfg.epochs and self._signalled(trainer):
            self._raise(trainer, f"epoch {st.epoch}")

    def _release(self) -> None:
        if self._own and self.stop is not None:
            self.stop.__exit__(None, None, None)
        self.stop, self._own = None, False

    def on_fit_end(self, trainer) -> None:
        self._release()

    def on_exception(self, trainer, exc: BaseException) -> None:
        self._release()
