"""The strategy protocol and registry.

A strategy turns labelled train (and optional validation) data plus a ``FitConfig`` into a
``TransferModel``. Each lives in its own small module and registers itself by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..backbones import create_backbone
from ..backbones.base import Backbone
from ..config import FitConfig
from ..data.dataset import PLURAL, TaskData
from ..errors import DataError
from ..heads import head_spec, make_head
from ..model import TransferModel
from ..registry import Registry


class Strategy(Protocol):
    name: str
    description: str

    def fit(
        self, train: TaskData, val: TaskData | None, cfg: FitConfig, *, run_dir: Path | None = None, progress: bool = True,
        resume: bool = False, callbacks=(),
    ) -> TransferModel:
        """Train and return a model; ``resume=True`` continues from ``run_dir``'s newest checkpoint;
        ``callbacks`` (``transferkit.training.Callback``) join the training loop's own, for the
        strategies that train with it (linear probes and stacks fitted in closed form have none)."""


STRATEGIES: Registry[type] = Registry("strategy")


def register_strategy(name: str):
    """Class decorator: ``@register_strategy("finetune")``; duplicate names are rejected."""
    return STRATEGIES.class_decorator(name)


def make_backbone(cfg: FitConfig, pretrained: bool = True) -> Backbone:
    return create_backbone(
        cfg.backbone,
        pretrained=pretrained,
        weights=cfg.backbone_weights,
        image_size=cfg.image_size,
        pooling=cfg.pooling,
        max_length=cfg.max_length,
        layer=cfg.layer,
        window=cfg.audio_window,
        eval_windows=cfg.audio_eval,
    )


def check_modality(backbone: Backbone, data: TaskData, cfg: FitConfig) -> None:
    if backbone.modality != data.modality:
        raise DataError(
            f"Backbone {cfg.backbone!r} takes {backbone.modality} inputs but the data holds {PLURAL.get(data.modality, data.modality)}.",
            "use an image backbone (e.g. efficientnet_lite0) for images, a text one (e.g. minilm) for texts and an audio one "
            "(e.g. crepe_tiny, speaker_ge2e) for audio.",
        )


def new_model(backbone: Backbone, data: TaskData, cfg: FitConfig, strategy: str, kind: str | None = None) -> TransferModel:
    check_modality(backbone, data, cfg)
    spec = head_spec(kind or ("mlp" if cfg.head == "mlp" else "linear"), backbone.num_features, data.num_outputs, cfg.dropout)
    return TransferModel(backbone, make_head(spec), head_spec=spec, task=data.task, label_names=data.label_names, strategy=strategy)
