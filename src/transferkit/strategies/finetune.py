"""Fine-tuning: full, layer-wise (``freeze``), gradual unfreezing, discriminative learning rates."""

from __future__ import annotations

from pathlib import Path

from ..config import FitConfig
from ..data.dataset import TaskData
from ..training import seed_everything, train
from ..model import TransferModel
from .base import make_backbone, new_model, register_strategy
from .linear_probe import fit_probe_head


@register_strategy("finetune")
class FineTune:
    description = (
        "fine-tune the pretrained backbone with a new head; --freeze N keeps the first N layer groups frozen, "
        "--unfreeze gradual trains the head first and unfreezes one more group per stage; deeper groups get higher rates"
    )

    def fit(self, train_data: TaskData, val: TaskData | None, cfg: FitConfig, *, run_dir: Path | None = None, progress: bool = True, resume: bool = False, callbacks=()) -> TransferModel:
        seed_everything(cfg.seed)  # the head's (and, for scratch, the backbone's) init follows --seed
        model = new_model(make_backbone(cfg, pretrained=True), train_data, cfg, self.name)
        if cfg.head_init == "probe" and not resume:  # a resumed run loads its head from the checkpoint
            # LP-FT: start from a linear probe's head so early updates do not distort pretrained features
            fit_probe_head(model, train_data, val, cfg, "linear", progress)  # same loss as fine-tuning: calibrated logits
        model.info["history"] = train(model, train_data, val, cfg, run_dir=run_dir, progress=progress, resume=resume, callbacks=callbacks)
        return model
