"""Domain adaptation on the training engine: a callback (per-epoch work, label-free model
selection, logs) and a loss term (the methods' losses on unlabelled target batches)."""

from __future__ import annotations

from typing import Any

from ..training.callbacks import Callback, register_callback
from ..training.trainer import LossTerm, TrainingError


@register_callback("domain_adaptation")
class DomainAdaptation(Callback):
    order = 5  # its epoch start predicts the target set before train mode is set; its score is the selection's

    def __init__(self, adaptation):
        self.adaptation = adaptation

    def on_fit_start(self, trainer) -> None:
        if trainer.cfg.checkpoint_interval() or trainer.resume:
            raise TrainingError("Checkpoints and --resume are not supported for domain adaptation yet.", "drop --checkpoint-every/--resume.")
        if trainer.runtime.distributed:
            raise TrainingError("Domain adaptation runs in one process.", "start transferkit adapt without torchrun/accelerate launch.")
        trainer.selection = self.adaptation.selection

    def on_epoch_start(self, trainer) -> None:
        self.adaptation.start_epoch(trainer.model, trainer.state.epoch)

    def on_validation(self, trainer, record: dict[str, Any]) -> None:
        logs = self.adaptation.end_epoch(trainer.model, trainer.state.epoch)
        record.update(logs)
        if logs.get("selection_score") is not None:
            trainer.state.score = logs["selection_score"]


class AdaptationLoss(LossTerm):
    """The adaptation methods' losses on a target batch drawn for each source micro-batch."""

    name = "adaptation"

    def __init__(self, adaptation):
        self.adaptation = adaptation

    def setup(self, trainer) -> None:
        self.adaptation.setup(trainer.model, trainer.device, trainer.augmenter)

    def param_groups(self, cfg) -> list[dict[str, Any]]:
        return self.adaptation.param_groups(cfg)

    def __call__(self, trainer, features, outputs):
        return self.adaptation.loss(trainer.model, features, outputs, progress=trainer.state.progress)
