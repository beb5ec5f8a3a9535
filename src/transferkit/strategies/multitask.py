"""Multi-task fine-tuning: one shared pretrained backbone, one head per label column, joint training."""

from __future__ import annotations

from pathlib import Path

from ..config import FitConfig
from ..data.dataset import TaskData
from ..training import seed_everything, train
from ..errors import ConfigError, DataError
from ..model import TransferModel
from ..multitask import MultiTaskHead, multitask_spec
from .base import check_modality, make_backbone, register_strategy


def parse_weights(text: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"--mt-weights entry {part.strip()!r} is not NAME=NUMBER.", "pass e.g. --mt-weights category=1,subcategory=0.5.")
    return out


@register_strategy("multitask")
class MultiTask:
    description = (
        "one shared backbone fine-tuned with one head per label column (--tasks a,b:regression); rows may miss "
        "labels of some tasks; tasks weighted by learned uncertainty (--mt-weighting) or --mt-weights"
    )

    def fit(self, train_data: TaskData, val: TaskData | None, cfg: FitConfig, *, run_dir: Path | None = None,
            progress: bool = True, resume: bool = False, callbacks=()) -> TransferModel:
        if train_data.task != "multitask" or not train_data.tasks:
            raise DataError("The multitask strategy needs data with several label columns.",
                            "pass --tasks col1,col2 (Python: loader={'tasks': 'col1,col2'}).")
        weights = parse_weights(cfg.mt_weights)  # bad options fail before any work
        seed_everything(cfg.seed)
        backbone = make_backbone(cfg, pretrained=True)
        check_modality(backbone, train_data, cfg)
        spec = multitask_spec(backbone.num_features, train_data.tasks, cfg.dropout, cfg.mt_weighting,
                              weights, cfg.label_smoothing)
        model = TransferModel(backbone, MultiTaskHead(spec), head_spec=spec, task="multitask",
                              label_names=list(train_data.label_names), strategy=self.name)
        model.info["history"] = train(model, train_data, val, cfg, run_dir=run_dir, progress=progress, resume=resume, callbacks=callbacks)
        model.info["task_weights"] = dict(zip(train_data.label_names, (
            model.head.log_vars.detach().neg().exp().tolist() if cfg.mt_weighting == "uncertainty" else model.head.weights.tolist())))
        return model
