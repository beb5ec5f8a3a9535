"""Per-modality input handling behind one small interface, looked up by the backbone's modality.

A handler module gives ``prepare(backbone, inputs, progress, device, cache)`` (decode once),
``make_batch(backbone, prepared, idx, device, augmenter)`` (a batch for the backbone),
``make_augmenter(backbone, device, hflip)`` (training augmentation or None) and
``dummy_batch(backbone)``. Audio lives here; images and texts are still handled inline in
``transferkit.inputs`` (they predate this interface).
"""

from __future__ import annotations

import importlib
from types import ModuleType

_HANDLERS = {"audio": "transferkit.modalities.audio"}


def handler(modality: str) -> ModuleType | None:
    """The handler module of ``modality``, or None where ``transferkit.inputs`` handles it inline."""
    name = _HANDLERS.get(modality)
    return importlib.import_module(name) if name else None
