"""The training loop shared by every gradient-based strategy.

AdamW with per-layer-group learning rates, warmup then cosine (or one-cycle), bf16 autocast on
CUDA and fp32 elsewhere, batched on-device augmentation, early stopping on the validation metric
with best weights restored, a progress bar, and one JSON line per epoch in the run folder.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import FitConfig
from .data.dataset import TaskData
from .errors import TransferkitError
from .freezing import frozen_at_epoch, set_frozen_groups
from .inputs import Augmenter, autocast, make_batch, prepare, resolve_device
from .metrics import primary_metric, task_metrics
from .model import TransferModel


class TrainingError(TransferkitError):
    exit_code = 3


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def param_groups(model: TransferModel, cfg: FitConfig) -> list[dict[str, Any]]:
    """One optimiser group per backbone layer group (deeper = higher lr) plus the head.

    Backbone group i of n gets ``lr * backbone_lr_ratio * layer_decay ** (n - 1 - i)``; biases and
    norm weights (1-D tensors) get no weight decay.
    """
    params = dict(model.backbone.named_parameters())
    groups = model.backbone.layer_groups()
    n = len(groups)
    out: list[dict[str, Any]] = []

    def add(name: str, tensors: list[nn.Parameter], lr: float) -> None:
        decay = [p for p in tensors if p.ndim > 1]
        no_decay = [p for p in tensors if p.ndim <= 1]
        if decay:
            out.append({"name": name, "params": decay, "lr": lr, "weight_decay": cfg.weight_decay})
        if no_decay:
            out.append({"name": f"{name}.no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})

    for i, names in enumerate(groups):
        add(f"backbone.{i}", [params[k] for k in names], cfg.lr * cfg.backbone_lr_ratio * cfg.layer_decay ** (n - 1 - i))
    add("head", list(model.head.parameters()), cfg.lr)
    return out


def _scheduler(opt: torch.optim.Optimizer, cfg: FitConfig, total_steps: int):
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total_steps, pct_start=max(cfg.warmup, 0.01)
        )
    warm = int(cfg.warmup * total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _loss_fn(task: str, label_smoothing: float):
    if task == "classification":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if task == "multilabel":
        return nn.BCEWithLogitsLoss()
    return nn.MSELoss()


def _targets(task: str, y: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(y).to(device)
    if task == "classification":
        return t.long()
    if task == "regression":
        return t.float().view(-1, 1)
    return t.float()


def check_labels(model: TransferModel, data: TaskData) -> None:
    """Labels are checked before the first step: never a device-side assert."""
    c = model.head_spec["out"]
    if data.task == "classification":
        if data.targets.dtype.kind not in "iu":
            raise TrainingError("Classification labels must be integer class indices.", "load data with load_data().")
        if len(data) and (data.targets.min() < 0 or data.targets.max() >= c):
            raise TrainingError(f"Labels outside 0..{c - 1} for a head of size {c}.", "rebuild the head for the label set.")
    elif data.task == "multilabel" and data.targets.shape[1] != c:
        raise TrainingError(f"{data.targets.shape[1]} label columns for a head of size {c}.", "rebuild the head for the label set.")


def train(
    model: TransferModel,
    train_data: TaskData,
    val_data: TaskData | None,
    cfg: FitConfig,
    *,
    run_dir: str | Path | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train ``model`` in place. Returns one record per epoch; best weights (on val) are restored."""
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    if val_data is not None and len(val_data) == 0:
        val_data = None
    for part in (train_data, val_data):
        if part is not None:
            check_labels(model, part)
    if len(train_data) < 2:
        raise TrainingError(f"Training needs at least 2 examples (got {len(train_data)}).", "add data or lower --val-fraction/--test-fraction.")
    backbone = model.backbone
    n_groups = len(backbone.layer_groups())
    model.to(device)
    if device.type == "cuda" and backbone.modality == "image":
        model.to(memory_format=torch.channels_last)

    x_train = prepare(backbone, train_data.inputs)
    x_val = prepare(backbone, val_data.inputs) if val_data is not None else None
    augmenter = Augmenter(backbone.preprocess, hflip=cfg.hflip) if (cfg.augment and backbone.modality == "image") else None

    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, fused=device.type == "cuda")
    n = len(train_data)
    bs = min(cfg.batch_size, n)
    # a trailing batch of one sample is dropped (BatchNorm cannot train on it)
    steps_per_epoch = max(1, n // bs if n % bs == 1 else math.ceil(n / bs))
    total = steps_per_epoch * cfg.epochs
    sched = _scheduler(opt, cfg, total)
    loss_fn = _loss_fn(model.task, cfg.label_smoothing)
    metric_name, higher = primary_metric(model.task)
    gen = torch.Generator().manual_seed(cfg.seed)
    y_train = train_data.targets

    history: list[dict[str, Any]] = []
    best_score, best_state, best_epoch, bad_epochs = None, None, -1, 0
    log_path = Path(run_dir) / "metrics.jsonl" if run_dir else None
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")

    bar = progress_bar(progress)
    step = 0
    with bar:
        task_id = bar.add_task("train", total=total, info="")
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            n_frozen = frozen_at_epoch(epoch, n_groups, cfg.freeze, cfg.unfreeze, cfg.unfreeze_every)
            frozen_norms = set_frozen_groups(backbone, n_frozen)
            model.train()
            for m in frozen_norms:
                m.eval()
            perm = torch.randperm(n, generator=gen)
            losses = []
            for b in range(steps_per_epoch):
                idx = perm[b * bs : (b + 1) * bs]
                batch = make_batch(backbone, x_train, idx, device, augmenter)
                target = _targets(model.task, y_train[idx.numpy()], device)
                with autocast(device):
                    out = model(batch)
                loss = loss_fn(out.float(), target)
                if not torch.isfinite(loss):
                    raise TrainingError(f"Loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}.", "lower --lr.")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 5.0)
                opt.step()
                sched.step()
                step += 1
                losses.append(loss.item())
                bar.update(task_id, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss {np.mean(losses):.3f}")
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                "frozen_groups": n_frozen,
                "lr_head": float(opt.param_groups[-1]["lr"]),
            }
            if val_data is not None:
                out = model.predict_outputs(None, prepared=x_val, batch_size=cfg.eval_batch_size, device=device)
                m = task_metrics(model.task, val_data.targets, out, model.label_names)
                record[f"val_{metric_name}"] = m[metric_name]
                if "macro_f1" in m:
                    record["val_macro_f1"] = m["macro_f1"]
                score = m[metric_name]
                improved = best_score is None or (score > best_score if higher else score < best_score)
                if improved:
                    best_score, best_epoch, bad_epochs = score, epoch + 1, 0
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                else:
                    bad_epochs += 1
            record["seconds"] = round(time.perf_counter() - t0, 3)
            history.append(record)
            if log_path:
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            shown = f" val {metric_name} {record[f'val_{metric_name}']:.3f}" if val_data is not None else ""
            bar.update(task_id, info=f"epoch {epoch + 1}/{cfg.epochs} loss {record['train_loss']:.3f}{shown}")
            if val_data is not None and cfg.patience and bad_epochs >= cfg.patience:
                bar.update(task_id, completed=total)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
        history.append({"best_epoch": best_epoch, f"best_val_{metric_name}": best_score})
    set_frozen_groups(backbone, 0)
    model.cpu().eval()
    return history


def progress_bar(enabled: bool):
    """A rich progress bar (tasks take an ``info`` field), or a no-op stand-in."""
    if not enabled:
        return _NullBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False,
    )


class _NullBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass
