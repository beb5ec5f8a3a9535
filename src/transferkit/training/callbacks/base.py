"""The callback protocol and its dispatcher.

A callback reacts to a fixed list of events; what happens at an event is the callback's business,
never a branch inside the trainer. Each keeps its own state and exposes it with
``state_dict``/``load_state_dict``, so a checkpoint carries it and a resumed run restores it.
Callbacks request things through ``trainer.state`` (``should_stop``, ``score``) rather than
steering the loop.

Events, in the order a run meets them::

    on_fit_start            after setup (model on its device, optimiser, data prepared)
      on_epoch_start        before train mode is set (may predict with the model)
      on_train_mode         right after model.train() (e.g. keep frozen BatchNorm in eval)
        on_step_end         after each optimiser step (loss: that step's mean loss)
      on_validation         after the epoch's validation metrics are in ``record``
      on_epoch_end          the epoch's record is complete (state.epoch already counts it)
    on_fit_end              training is over (best weights may be restored here)
    on_exception            something raised; the exception propagates afterwards
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from ...registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from ..trainer import Trainer

EVENTS = ("on_fit_start", "on_epoch_start", "on_train_mode", "on_step_end", "on_validation", "on_epoch_end", "on_fit_end",
          "on_exception")

CALLBACKS: Registry[type] = Registry("callback")


def register_callback(name: str):
    """Class decorator: ``@register_callback("early_stopping")``; duplicate names are rejected."""
    return CALLBACKS.class_decorator(name)


class Callback:
    """Base class: every hook is optional. ``name`` keys the callback's state in checkpoints
    (user callbacks default to their class name). ``order``: lower runs first at each event; a
    dict gives an order per event (``{"on_fit_start": 0, "default": 90}``)."""

    name: str = ""
    order: int | dict[str, int] = 50

    @property
    def key(self) -> str:
        return self.name or type(self).__name__

    def on_fit_start(self, trainer: "Trainer") -> None: ...
    def on_epoch_start(self, trainer: "Trainer") -> None: ...
    def on_train_mode(self, trainer: "Trainer") -> None: ...
    def on_step_end(self, trainer: "Trainer", loss: float) -> None: ...
    def on_validation(self, trainer: "Trainer", record: dict[str, Any]) -> None: ...
    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None: ...
    def on_fit_end(self, trainer: "Trainer") -> None: ...
    def on_exception(self, trainer: "Trainer", exc: BaseException) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state, except values under ``"tensors"``: ``{file: {name: tensor}}``,
        written as ``file.safetensors`` in the checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _order(cb: Callback, event: str) -> int:
    o = cb.order
    return o.get(event, o.get("default", 50)) if isinstance(o, dict) else o


class CallbackList:
    """Calls every callback at each event, in ``order`` (stable for equal orders)."""

    def __init__(self, callbacks: Iterable[Callback]):
        self.callbacks = list(callbacks)
        self._by_event = {e: sorted(self.callbacks, key=lambda c: _order(c, e)) for e in EVENTS}
        keys = [c.key for c in self.callbacks]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            from ...errors import ConfigError

            raise ConfigError(f"Two callbacks share the name {dup[0]!r}.", "give each callback its own name attribute.")

    def __iter__(self):
        return iter(self.callbacks)

    def find(self, cls: type) -> Any:
        return next((c for c in self.callbacks if isinstance(c, cls)), None)

    def call(self, event: str, trainer: "Trainer", *args: Any) -> None:
        for cb in self._by_event[event]:
            getattr(cb, event)(trainer, *args)

    def state_dict(self) -> dict[str, Any]:
        return {cb.key: cb.state_dict() for cb in self.callbacks}

    def load_state_dict(self, states: dict[str, Any]) -> None:
        for cb in self.callbacks:
            if cb.key in states:
                cb.load_state_dict(states[cb.key])
