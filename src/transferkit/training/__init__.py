"""The training engine: ``Trainer``, its ``TrainState``, ``Callback``s, ``LossTerm``s and the
``Runtime`` (devices and processes, on accelerate). See ``trainer`` and ``callbacks.base``."""

from .callbacks import Callback, CallbackList, register_callback
from .runtime import Runtime
from .state import TrainState
from .trainer import LossTerm, Trainer, TrainingError, check_labels, default_callbacks, seed_everything, train

__all__ = ["Trainer", "TrainState", "Callback", "CallbackList", "register_callback", "LossTerm", "Runtime", "TrainingError",
           "check_labels", "default_callbacks", "seed_everything", "train"]
