"""SIGTERM/SIGINT over the whole of a run.

Before training starts the signal stops the run at once (``Preempted``, exit 75) and, as the run
folder has not been written to, nothing is left behind. From the first training step on it is
deferred: the engine finishes the current step, writes a checkpoint and stops; once training is
over the run saves its model first and then exits 75. Signals are process-wide, so the innermost
active ``StopSignal`` is the one in charge (``active()``).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from ..errors import Preempted

_ACTIVE: list["StopSignal"] = []


def active() -> "StopSignal | None":
    return _ACTIVE[-1] if _ACTIVE else None


class StopSignal:
    """Installs SIGTERM/SIGINT handlers (main thread only) for a ``with`` block."""

    def __init__(self, enabled: bool = True, deferred: bool = False):
        self.signal: int | None = None
        self.deferred = deferred
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        if self.enabled:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        _ACTIVE.append(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if _ACTIVE and _ACTIVE[-1] is self:
            _ACTIVE.pop()
        from .runtime import distributed_env

        for sig, old in self._old.items():
            # one of several processes leaving on an error: the launcher's SIGTERM to the others must
            # not kill this one before it has said why it stopped
            signal.signal(sig, signal.SIG_IGN if (exc is not None and distributed_env()) else old)
        self._old = {}
        return False

    def defer(self) -> None:
        """From now on a signal only sets ``self.signal`` (training checks it between steps)."""
        self.deferred = True

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        if not self.deferred:
            raise Preempted(f"Stopped by signal {signum} before training started; nothing was written.",
                            "run the same command again.")
