"""The baseline: the same architecture randomly initialised, trained the same way."""

from __future__ import annotations

from pathlib import Path

from ..config import FitConfig
from ..data.dataset import TaskData
from ..training import seed_everything, train
from ..model import TransferModel
from .base import make_backbone, new_model, register_strategy


@register_strategy("scratch")
class Scratch:
    description = "same architecture, random initialisation, every layer trained at the head's rate (the no-transfer baseline)"

    def fit(self, train_data: TaskData, val: TaskData | None, cfg: FitConfig, *, run_dir: Path | None = None, progress: bool = True, resume: bool = False, callbacks=()) -> TransferModel:
        # no pretrained knowledge to protect: one learning rate for all layers, nothing frozen
        cfg = cfg.replace(backbone_lr_ratio=1.0, layer_decay=1.0, freeze=0, unfreeze="none")
        seed_everything(cfg.seed)  # the head's (and, for scratch, the backbone's) init follows --seed
        model = new_model(make_backbone(cfg, pretrained=False), train_data, cfg, self.name)
        model.info["history"] = train(model, train_data, val, cfg, run_dir=run_dir, progress=progress, resume=resume, callbacks=callbacks)
        return model
