"""The training loop shared by every gradient-based strategy.

AdamW with per-layer-group learning rates, warmup then cosine (or one-cycle), bf16 autocast on
CUDA and fp32 elsewhere, batched on-device augmentation, early stopping on the validation metric
with best weights restored, a progress bar, and one JSON line per epoch in the run folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import FitConfig
from .data.dataset import TaskData
from .errors import ConfigError, Preempted, TransferkitError  # noqa: F401  (Preempted: re-exported)
from .freezing import frozen_at_epoch, set_frozen_groups
from .inputs import autocast, length_grouped, make_augmenter, make_batch, prepare, resolve_device, to_device
from .metrics import primary_metric, task_metrics
from .model import TransferModel
from .training import preemption, rundir
from .training.rundir import ensure_free_space, state_bytes, storage_errors


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
    return torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(int(cfg.warmup * total_steps), total_steps))


def warmup_cosine(warm: int, total_steps: int):
    """Learning-rate factor of a step: linear warm-up over ``warm`` steps, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


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


DRIFT_REFUSED = ("backbone", "backbone_weights", "strategy", "image_size", "pooling", "max_length", "head")


class ResumeError(ConfigError):
    """A resume that would change the model or the task (exit 2, before any training)."""


def data_fingerprint(train_data: TaskData, val_data: TaskData | None) -> dict[str, Any]:
    """Sizes and a content digest of the training and validation sets (inputs and targets), so a
    resume on other data is noticed."""
    from ._cache import inputs_digest

    out: dict[str, Any] = {}
    for name, part in (("train", train_data), ("val", val_data)):
        if part is None:
            out[f"n_{name}"] = 0
            continue
        h = hashlib.sha256(inputs_digest(part.inputs, part.modality).encode())
        h.update(np.ascontiguousarray(part.targets).tobytes())
        out[f"n_{name}"], out[f"{name}_digest"] = len(part), h.hexdigest()[:16]
    return out


def check_drift(saved: dict[str, Any], cfg: FitConfig, saved_labels: list[str], model: TransferModel,
                saved_data: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> list[str]:
    """Refuse a resume that changes the model or the task; return warnings for other changed
    options and for changed training/validation data."""
    changed = {k: (saved.get(k), v) for k, v in cfg.to_dict().items() if k in saved and saved.get(k) != v}
    refused = {k: v for k, v in changed.items() if k in DRIFT_REFUSED}
    if refused or list(saved_labels) != list(model.label_names):
        what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items()) or f"labels {saved_labels} -> {model.label_names}"
        raise ResumeError(f"Cannot resume: the run was started with a different model or task ({what}).",
                          "resume with the original options and data, or start a new run folder.")
    notes = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items() if k not in ("checkpoint_every", "keep_checkpoints", "device")]
    if saved_data and data:
        for part in ("train", "val"):
            n0, n1 = saved_data.get(f"n_{part}"), data.get(f"n_{part}")
            if n0 != n1:
                notes.append(f"n_{part}: {n0} -> {n1}")
            elif saved_data.get(f"{part}_digest") != data.get(f"{part}_digest"):
                notes.append(f"{part} data: same size ({n1}), different content")
    if notes:
        warnings.warn("resuming with changed options (results will differ from an uninterrupted run): " + ", ".join(notes), stacklevel=3)
    return notes


def _truncate_jsonl(path: Path, keep: int) -> None:
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)[:keep]
        path.write_text("".join(lines))


def train(
    model: TransferModel,
    train_data: TaskData,
    val_data: TaskData | None,
    cfg: FitConfig,
    *,
    run_dir: str | Path | None = None,
    progress: bool = True,
    resume: bool = False,
    adaptation=None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place. Returns one record per epoch; best weights (on val) are restored.

    ``adaptation`` (domain adaptation, see ``transferkit.adapt``) adds a loss on unlabelled target
    batches to every step, extra trainable modules, and may replace the validation metric as the
    model-selection score with one computed without target labels.

    With ``run_dir``: ``metrics.jsonl`` (one line per epoch), ``steps.jsonl`` (one line per step:
    loss and a hash of the samples seen), checkpoints every ``cfg.checkpoint_every`` and on
    SIGTERM/SIGINT (then ``Preempted`` is raised, exit code 75); ``resume=True`` continues from the
    newest complete checkpoint so that a CPU run ends bit-for-bit as an uninterrupted one.
    """
    from . import checkpoint

    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    if val_data is not None and len(val_data) == 0:
        val_data = None
    for part in (train_data, val_data):
        if part is not None:
            check_labels(model, part)
    if len(train_data) < 2:
        raise TrainingError(f"Training needs at least 2 examples (got {len(train_data)}).", "add data or lower --val-fraction/--test-fraction.")
    interval = cfg.checkpoint_interval()
    if adaptation is not None and (interval or resume):
        raise TrainingError("Checkpoints and --resume are not supported for domain adaptation yet.", "drop --checkpoint-every/--resume.")
    if (interval or resume) and run_dir is None:
        raise TrainingError("--checkpoint-every and --resume need a run folder.", "pass --out RUN_DIR (Python: out=...).")
    run_dir = Path(run_dir) if run_dir is not None else None
    backbone = model.backbone
    n_groups = len(backbone.layer_groups())
    model.to(device)
    if device.type == "cuda" and backbone.modality == "image":
        model.to(memory_format=torch.channels_last)

    # decoded once (cached on disk) and, on a GPU, kept in device memory when it fits
    x_train = to_device(prepare(backbone, train_data.inputs, device=device), device)
    x_val = to_device(prepare(backbone, val_data.inputs, device=device), device) if val_data is not None else None
    lengths = [len(t) for t in train_data.inputs] if backbone.modality == "text" else None
    run_backbone = torch.compile(backbone) if cfg.compile else backbone
    augmenter = make_augmenter(backbone, device, hflip=cfg.hflip) if cfg.augment else None

    groups = param_groups(model, cfg)
    if adaptation is not None:
        adaptation.setup(model, device, augmenter)
        groups += adaptation.param_groups(cfg)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type == "cuda")
    n = len(train_data)
    bs = min(cfg.batch_size, n)
    # a trailing batch of one sample is dropped (BatchNorm cannot train on it); with --compile every
    # partial batch is (one batch shape: no recompilation)
    steps_per_epoch = max(1, n // bs if (n % bs == 1 or cfg.compile) else math.ceil(n / bs))
    total = steps_per_epoch * cfg.epochs
    sched = _scheduler(opt, cfg, total)
    loss_fn = model.head.loss if model.task == "multitask" else _loss_fn(model.task, cfg.label_smoothing)
    metric_name, higher = primary_metric(model.task)
    gen = torch.Generator().manual_seed(cfg.seed)
    y_train = _targets(model.task, train_data.targets, device)  # on the device once, indexed per step

    history: list[dict[str, Any]] = []
    best_score, best_state, best_epoch, bad_epochs = None, None, -1, 0
    start_epoch, start_batch, step, epoch_losses, skipped, stopped = 0, 0, 0, [], 0, False
    micro = bs  # micro-batch size; halved on out-of-memory (recorded in the epoch records)
    gen_resume_state = None
    log_path = run_dir / "metrics.jsonl" if run_dir else None
    steps_path = run_dir / "steps.jsonl" if run_dir else None
    fingerprint = data_fingerprint(train_data, val_data) if run_dir is not None else None
    if run_dir is not None:  # room for the model and a checkpoint (weights, best weights, optimiser moments)
        copies = 1 + 4 * (cfg.keep_checkpoints if interval else 1)
        ensure_free_space(run_dir, copies * state_bytes(model) + (1 << 20), "the model and its checkpoints")
    if resume:
        ck = checkpoint.load(run_dir)
        st = ck.state
        check_drift(st["config"], cfg, st["label_names"], model, st.get("data"), fingerprint)
        model.load_state_dict({k: v.to(device) for k, v in ck.model_state().items()})
        best_state = ck.best_state()
        opt.load_state_dict(ck.tensors["optimizer"])
        sched.load_state_dict(ck.tensors["scheduler"])
        gen_resume_state = ck.tensors["generator"]
        start_epoch, start_batch, step = st["epoch"], st["batch"], st["step"]
        history, epoch_losses, skipped, stopped = st["history"], st["epoch_losses"], st["skipped_steps"], st["stopped"]
        best_score, best_epoch, bad_epochs = st["best_score"], st["best_epoch"], st["bad_epochs"]
        micro = min(bs, st.get("micro_batch_size", bs))
        _truncate_jsonl(log_path, len(history))
        _truncate_jsonl(steps_path, step)
        checkpoint.set_rng_state(ck.tensors["rng"])
    if run_dir is not None:
        folder = rundir.opened(run_dir)
        if folder is not None:
            folder.begin()  # an earlier run in this folder (--overwrite) is replaced only now
        if not resume:
            run_dir.mkdir(parents=True, exist_ok=True)
            log_path.write_text("")
            steps_path.write_text("")

    def save_checkpoint(epoch: int, batch: int, gen_state: torch.Tensor) -> Path:
        state = {
            "epoch": epoch, "batch": batch, "step": step, "history": history, "epoch_losses": epoch_losses,
            "skipped_steps": skipped, "stopped": stopped, "best_score": best_score, "best_epoch": best_epoch,
            "bad_epochs": bad_epochs, "micro_batch_size": micro, "config": cfg.to_dict(), "label_names": model.label_names,
            "backbone": backbone.name, "task": model.task, "data": fingerprint,
        }
        tensors = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "generator": gen_state, "rng": checkpoint.rng_state()}
        with storage_errors(run_dir / "checkpoints"):
            return checkpoint.save(run_dir, step, model, best_state, tensors, state, keep=cfg.keep_checkpoints)

    def forward_backward(idx: torch.Tensor) -> torch.Tensor:
        """Loss of one optimiser step, gradients accumulated over micro-batches of ``micro`` samples.
        On out-of-memory the micro-batch is halved and the step retried: the effective batch stays ``bs``."""
        nonlocal micro
        while True:
            try:
                step_loss = torch.zeros((), device=device)
                for s in range(0, len(idx), micro):
                    part = idx[s : s + micro]
                    batch = make_batch(backbone, x_train, part, device, augmenter)
                    target = y_train[part.to(device, non_blocking=True)]
                    with autocast(device):
                        feats = run_backbone(batch)
                        out = model.head(feats)
                    loss = loss_fn(out.float(), target)
                    if adaptation is not None:
                        loss = loss + adaptation.loss(model, feats, out, progress=step / max(1, total))
                    loss = loss * (len(part) / len(idx))
                    # no finiteness check here (it would wait for the GPU): a non-finite loss gives
                    # non-finite gradients, which the step checks once
                    loss.backward()
                    step_loss = step_loss + loss.detach()
                return step_loss
            except torch.OutOfMemoryError:
                opt.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if micro == 1:
                    raise TrainingError("Out of memory even with one sample per micro-batch.", "use a smaller --image-size or --max-length, or a smaller backbone.") from None
                micro = max(1, micro // 2)
                warnings.warn(f"out of memory: retrying with micro-batches of {micro} (gradient accumulation keeps the batch at {bs})", stacklevel=2)

    bar = progress_bar(progress)
    outer = preemption.active()  # the whole run's (api.fit), or our own for the training alone
    with bar, (contextlib.nullcontext(outer) if outer is not None else preemption.StopSignal(run_dir is not None)) as stop:
        stop.defer()  # from the first step on: finish the step, checkpoint, then stop
        task_id = bar.add_task("train", total=total, info="", completed=step)
        for epoch in range(start_epoch, cfg.epochs):
            if stopped:
                break
            t0 = time.perf_counter()
            if adaptation is not None:  # before train mode is set: it may predict the target set
                adaptation.start_epoch(model, epoch)
            n_frozen = frozen_at_epoch(epoch, n_groups, cfg.freeze, cfg.unfreeze, cfg.unfreeze_every)
            frozen_norms = set_frozen_groups(backbone, n_frozen)
            model.train()
            for m in frozen_norms:
                m.eval()
            if gen_resume_state is not None:
                gen.set_state(gen_resume_state)
                gen_resume_state = None
            gen_epoch_state = gen.get_state()
            perm = torch.randperm(n, generator=gen)
            if lengths is not None:  # texts: batches of similar length (less padding)
                perm = length_grouped(perm, lengths, bs)
            first = start_batch if epoch == start_epoch else 0
            if epoch != start_epoch or not resume:
                epoch_losses = []
            for b in range(first, steps_per_epoch):
                idx = perm[b * bs : (b + 1) * bs]
                opt.zero_grad(set_to_none=True)
                loss = forward_backward(idx)
                finite = bool(torch.isfinite(loss))
                if finite:
                    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 5.0)
                    finite = bool(torch.isfinite(norm))
                if not finite:
                    where = f"step {step + 1} (epoch {epoch + 1}, batch {b + 1}, samples {idx[:8].tolist()}{'...' if len(idx) > 8 else ''})"
                    if cfg.on_nan == "stop":
                        raise TrainingError(f"Non-finite loss or gradients at {where}; no checkpoint was written from this state.",
                                            "lower --lr, check those samples, or pass --on-nan skip.")
                    warnings.warn(f"skipped a non-finite step at {where}", stacklevel=2)
                    opt.zero_grad(set_to_none=True)
                    skipped += 1
                else:
                    opt.step()
                sched.step()
                step += 1
                loss_value = float(loss.item())
                epoch_losses.append(loss_value)
                if steps_path is not None:
                    order = hashlib.sha1(idx.numpy().tobytes()).hexdigest()[:12]
                    with open(steps_path, "a") as fh:
                        fh.write(json.dumps({"step": step, "epoch": epoch + 1, "batch": b + 1, "loss": loss_value, "samples": order}) + "\n")
                bar.update(task_id, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss {np.mean(epoch_losses):.3f}")
                if interval and interval[1] == "step" and step % interval[0] == 0:
                    save_checkpoint(epoch, b + 1, gen_epoch_state)
                if stop.signal is not None and run_dir is None:
                    raise Preempted(f"Stopped by signal {stop.signal} after step {step}; nothing was saved (no run folder).",
                                    "pass --out RUN_DIR to get a checkpoint you can resume from.")
                if stop.signal is not None:
                    path = save_checkpoint(epoch, b + 1, gen_epoch_state)
                    raise Preempted(f"Stopped by signal {stop.signal} after step {step}; checkpoint saved to {path}.",
                                    f"continue with: transferkit fit DATA --resume {run_dir}")
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
                "frozen_groups": n_frozen,
                "lr_head": float(opt.param_groups[-1]["lr"]),
            }
            if skipped:
                record["skipped_steps"] = skipped
            if micro != bs:
                record["micro_batch_size"] = micro
            if val_data is not None or adaptation is not None:
                score = None
                if val_data is not None:
                    out = model.predict_outputs(None, prepared=x_val, batch_size=cfg.eval_batch_size, device=device)
                    m = task_metrics(model.task, val_data.targets, out, model.label_names, model.head_spec.get("tasks"))
                    record[f"val_{metric_name}"] = m[metric_name]
                    if "macro_f1" in m:
                        record["val_macro_f1"] = m["macro_f1"]
                    if "task_scores" in m:  # multi-task: every task's own score, every epoch
                        record["val_tasks"] = m["task_scores"]
                    score = m[metric_name] if higher else -m[metric_name]
                if adaptation is not None:
                    logs = adaptation.end_epoch(model, epoch)
                    record.update(logs)
                    score = logs["selection_score"] if logs.get("selection_score") is not None else score
                if score is not None and (best_score is None or score > best_score):
                    best_score, best_epoch, bad_epochs = score, epoch + 1, 0
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                elif score is not None:
                    bad_epochs += 1
            record["seconds"] = round(time.perf_counter() - t0, 3)
            history.append(record)
            epoch_losses = []
            if log_path:
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            shown = f" val {metric_name} {record[f'val_{metric_name}']:.3f}" if val_data is not None else ""
            if adaptation is not None and "selection_score" in record:
                shown += f" select {record['selection_score']:.3f}"
            bar.update(task_id, info=f"epoch {epoch + 1}/{cfg.epochs} loss {record['train_loss']:.3f}{shown}")
            stopped = bool(best_score is not None and cfg.patience and bad_epochs >= cfg.patience)
            if interval and interval[1] == "epoch" and (epoch + 1) % interval[0] == 0:
                save_checkpoint(epoch + 1, 0, gen.get_state())
            if stop.signal is not None and run_dir is not None and not stopped and epoch + 1 < cfg.epochs:
                # a signal during validation: stop at the epoch boundary (after the last epoch, the run saves first)
                path = save_checkpoint(epoch + 1, 0, gen.get_state())
                raise Preempted(f"Stopped by signal {stop.signal} after epoch {epoch + 1}; checkpoint saved to {path}.",
                                f"continue with: transferkit fit DATA --resume {run_dir}")
            if stopped:
                bar.update(task_id, completed=total)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
        if adaptation is not None:
            history.append({"best_epoch": best_epoch, "selection": adaptation.selection, "best_selection_score": best_score})
        else:
            history.append({"best_epoch": best_epoch, f"best_val_{metric_name}": best_score if higher else -best_score})
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
