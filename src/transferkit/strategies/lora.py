"""LoRA: low-rank adapters (through peft) on the frozen pretrained backbone, plus a new head.

Only the adapters and the head train; the saved model holds only them (the pretrained base is
rebuilt from its name or folder when the model is loaded). ``merge(model)`` folds the adapters into
the base weights for export.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..backbones.lora import LoraBackbone, lora_backbone, merge
from ..config import FitConfig
from ..data.dataset import TaskData
from ..training import TrainingError, seed_everything, train
from ..model import TransferModel
from .base import new_model, register_strategy
from .linear_probe import fit_probe_head

LORA_OPTIONS = ("lora_r", "lora_alpha", "lora_dropout", "lora_targets")

__all__ = ["LoRA", "LoraBackbone", "merge", "make_lora_backbone", "parameter_info"]


def make_lora_backbone(cfg: FitConfig) -> LoraBackbone:
    return lora_backbone(cfg.backbone, weights=cfg.backbone_weights, image_size=cfg.image_size, pooling=cfg.pooling,
                         max_length=cfg.max_length, layer=cfg.layer, r=cfg.lora_r, alpha=cfg.lora_alpha,
                         dropout=cfg.lora_dropout, targets=cfg.lora_targets, window=cfg.audio_window, eval_windows=cfg.audio_eval)


def parameter_info(model: TransferModel) -> dict[str, int]:
    """Trainable (adapters + head) and total (base + adapters + head) parameter counts."""
    counts = model.backbone.parameter_counts()
    head = sum(p.numel() for p in model.head.parameters())
    return {"trainable_parameters": counts["adapter"] + head, "total_parameters": counts["base_total"] + head,
            "adapter_parameters": counts["adapter"], "head_parameters": head}


def _check_resume(run_dir: Path | None, cfg: FitConfig) -> None:
    """The LoRA options shape the model: a resumed run must keep them (the engine checks the others)."""
    from ..training.callbacks.checkpointing import ResumeError
    from ..training.checkpoint import find_latest

    path = find_latest(run_dir) if run_dir is not None else None
    if path is None:
        return  # the engine reports the missing checkpoint
    saved = json.loads((path / "state.json").read_text()).get("config", {})
    changed = {k: (saved[k], getattr(cfg, k)) for k in LORA_OPTIONS if k in saved and saved[k] != getattr(cfg, k)}
    if changed:
        what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ResumeError(f"Cannot resume: the run was started with other LoRA options ({what}).",
                            "resume with the original options, or start a new run folder.")


@register_strategy("lora")
class LoRA:
    description = (
        "LoRA adapters (peft) on the frozen pretrained backbone + a new head; only adapters and head train and are saved "
        "(--lora-r, --lora-alpha, --lora-dropout, --lora-targets); transferkit.strategies.lora.merge folds them in for export"
    )

    def fit(self, train_data: TaskData, val: TaskData | None, cfg: FitConfig, *, run_dir: Path | None = None, progress: bool = True,
            resume: bool = False, callbacks=()) -> TransferModel:
        if resume:
            _check_resume(run_dir, cfg)
        seed_everything(cfg.seed)  # the head's and the adapters' init follow --seed
        model = new_model(make_lora_backbone(cfg), train_data, cfg, self.name)
        if cfg.head_init == "probe" and not resume:  # adapters start at zero update: the probe sees the base's features
            fit_probe_head(model, train_data, val, cfg, "linear", progress)
        model.info["lora"] = {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                              "adapted_layers": len(model.backbone.target_modules)}
        model.info.update(parameter_info(model))
        model.info["history"] = train(model, train_data, val, cfg, run_dir=run_dir, progress=progress, resume=resume, callbacks=callbacks)
        return model
