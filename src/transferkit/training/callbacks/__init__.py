"""The training engine's callbacks: one concern each (see ``base`` for the events)."""

from .base import CALLBACKS, EVENTS, Callback, CallbackList, register_callback
from .best_model import BestModel
from .checkpointing import Checkpointing, ResumeError, check_drift, data_fingerprint
from .early_stopping import EarlyStopping
from .freezing import LayerFreezing, frozen_at_epoch, set_frozen_groups
from .logs import JsonlLogger
from .preemption import Preemption
from .progress import ProgressBar, progress_bar

__all__ = ["CALLBACKS", "EVENTS", "Callback", "CallbackList", "register_callback", "BestModel", "Checkpointing", "ResumeError",
           "check_drift", "data_fingerprint", "EarlyStopping", "LayerFreezing", "frozen_at_epoch", "set_frozen_groups",
           "JsonlLogger", "Preemption", "ProgressBar", "progress_bar"]
