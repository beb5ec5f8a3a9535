"""The Trainer: the one training loop every gradient-based strategy runs through.

It owns the loop and nothing else: data order, micro-batched forward/backward with out-of-memory
halving, the non-finite policy, clipping, optimiser and schedule steps, and validation. Every other
concern (freezing, best weights, early stopping, checkpoints and resume, preemption, logs, the
progress bar, domain adaptation, the user's own) is a ``Callback``; extra losses are ``LossTerm``s;
devices and processes are the ``Runtime`` (accelerate).
"""

from __future__ import annotations

import math
import random
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import inputs
from ..config import FitConfig
from ..data.dataset import TaskData
from ..errors import TransferkitError
from ..metrics import primary_metric, task_metrics
from .callbacks import (BestModel, Callback, CallbackList, Checkpointing, EarlyStopping, JsonlLogger, LayerFreezing, Preemption,
                        ProgressBar)
from .optim import adamw, clip_gradients, param_groups, scheduler
from .runtime import Runtime
from .state import TrainState


class TrainingError(TransferkitError):
    exit_code = 3


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class LossTerm:
    """An extra loss added to every training step, with its own trainable parameters.

    ``setup`` runs once the trainer has its device and augmentation (before the optimiser is
    built); ``param_groups`` adds optimiser groups; ``__call__`` returns the term for one
    micro-batch, given the backbone's features and the head's outputs of the source batch."""

    name = ""

    def setup(self, trainer: "Trainer") -> None:
        pass

    def param_groups(self, cfg: FitConfig) -> list[dict[str, Any]]:
        return []

    def __call__(self, trainer: "Trainer", features: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def loss_function(task: str, label_smoothing: float):
    if task == "classification":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if task == "multilabel":
        return nn.BCEWithLogitsLoss()
    return nn.MSELoss()


def targets_tensor(task: str, y: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(y).to(device)
    if task == "classification":
        return t.long()
    if task == "regression":
        return t.float().view(-1, 1)
    return t.float()


def check_labels(model, data: TaskData) -> None:
    """Labels are checked before the first step: never a device-side assert."""
    c = model.head_spec["out"]
    if data.task == "classification":
        if data.targets.dtype.kind not in "iu":
            raise TrainingError("Classification labels must be integer class indices.", "load data with load_data().")
        if len(data) and (data.targets.min() < 0 or data.targets.max() >= c):
            raise TrainingError(f"Labels outside 0..{c - 1} for a head of size {c}.", "rebuild the head for the label set.")
    elif data.task == "multilabel" and data.targets.shape[1] != c:
        raise TrainingError(f"{data.targets.shape[1]} label columns for a head of size {c}.", "rebuild the head for the label set.")


def default_callbacks(cfg: FitConfig, run_dir: Path | None, resume: bool, progress: bool) -> list[Callback]:
    """The concerns every run has, as callbacks (a run folder adds logs and checkpoints)."""
    interval = cfg.checkpoint_interval()
    if (interval or resume) and run_dir is None:
        raise TrainingError("--checkpoint-every and --resume need a run folder.", "pass --out RUN_DIR (Python: out=...).")
    out: list[Callback] = [LayerFreezing(cfg.freeze, cfg.unfreeze, cfg.unfreeze_every), BestModel(), EarlyStopping(cfg.patience),
                           ProgressBar(progress), Preemption()]
    if run_dir is not None:
        out += [JsonlLogger(run_dir, resume), Checkpointing(run_dir, interval, cfg.keep_checkpoints, resume)]
    return out


class _Forward(nn.Module):
    """Features and outputs of one batch: the module distributed data parallel wraps."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, batch):
        feats = self.backbone(batch)
        return feats, self.head(feats)


class Trainer:
    """``Trainer(model, cfg, callbacks=..., loss_terms=..., runtime=...).fit(train, val) -> history``.

    Trains ``model`` in place and returns one record per epoch (then the best epoch's record); the
    best weights on the selection score are restored. ``callbacks`` are added to the defaults
    (``default_callbacks``); pass ``defaults=False`` to use only your own."""

    def __init__(self, model, cfg: FitConfig, *, callbacks: Sequence[Callback] = (), loss_terms: Sequence[LossTerm] = (),
                 runtime: Runtime | None = None, run_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
                 defaults: bool = True):
        self.model, self.cfg = model, cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.resume = resume
        base = default_callbacks(cfg, self.run_dir, resume, progress) if defaults else []
        self.callbacks = CallbackList([*base, *callbacks])
        self.loss_terms = list(loss_terms)
        self.runtime = runtime or Runtime(cfg.device)
        self.state = TrainState()
        self.metric = primary_metric(model.task)
        self.selection: str | None = None  # set by a callback that selects by another score than a val metric
        self.batch_index: torch.Tensor | None = None  # the global batch of the last step

    # ------------------------------------------------------------------ setup
    def setup(self, train_data: TaskData, val_data: TaskData | None) -> None:
        cfg, model, rt = self.cfg, self.model, self.runtime
        seed_everything(cfg.seed)
        if val_data is not None and len(val_data) == 0:
            val_data = None
        for part in (train_data, val_data):
            if part is not None:
                check_labels(model, part)
        if len(train_data) < 2:
            raise TrainingError(f"Training needs at least 2 examples (got {len(train_data)}).", "add data or lower --val-fraction/--test-fraction.")
        self.train_data, self.val_data = train_data, val_data
        device = self.device = rt.device
        self.backbone = backbone = model.backbone
        model.to(device)
        if device.type == "cuda" and backbone.modality == "image":
            model.to(memory_format=torch.channels_last)
        # decoded once (cached on disk) and, on a GPU, kept in device memory when it fits
        self.x_train = inputs.to_device(inputs.prepare(backbone, train_data.inputs, device=device), device)
        self.x_val = inputs.to_device(inputs.prepare(backbone, val_data.inputs, device=device), device) if val_data is not None else None
        self.lengths = [len(t) for t in train_data.inputs] if backbone.modality == "text" else None
        self.forward_module = rt.wrap(_Forward(torch.compile(backbone) if cfg.compile else backbone, model.head))
        self.augmenter = inputs.make_augmenter(backbone, device, hflip=cfg.hflip) if cfg.augment else None
        groups = param_groups(model, cfg)
        for term in self.loss_terms:
            term.setup(self)
            groups += term.param_groups(cfg)
        self.optimizer = adamw(groups, cfg.lr, device)
        n = len(train_data)
        bs = min(cfg.batch_size, n)
        # a trailing batch of one sample is dropped (BatchNorm cannot train on it); with --compile every
        # partial batch is (one batch shape: no recompilation)
        steps_per_epoch = max(1, n // bs if (n % bs == 1 or cfg.compile) else math.ceil(n / bs))
        st = self.state
        st.batch_size, st.micro_batch_size = bs, max(1, math.ceil(bs / rt.world_size))
        st.steps_per_epoch, st.total_steps = steps_per_epoch, steps_per_epoch * cfg.epochs
        self.scheduler = scheduler(self.optimizer, cfg.schedule, st.total_steps, cfg.warmup)
        self.loss_fn = model.head.loss if model.task == "multitask" else loss_function(model.task, cfg.label_smoothing)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.gen_epoch_state = self.gen.get_state()
        self.y_train = targets_tensor(model.task, train_data.targets, device)  # on the device once, indexed per step

    def generator_state(self) -> torch.Tensor:
        """The data-order generator as a checkpoint needs it: mid-epoch, its state at the epoch's
        start (the epoch's order is drawn again on resume); at a boundary, its current state."""
        return self.gen_epoch_state if self.state.batch > 0 else self.gen.get_state()

    # ------------------------------------------------------------------ the loop
    def fit(self, train_data: TaskData, val_data: TaskData | None = None) -> list[dict[str, Any]]:
        self.setup(train_data, val_data)
        try:
            self.callbacks.call("on_fit_start", self)
            while self.state.epoch < self.cfg.epochs and not self.state.should_stop:
                self.run_epoch()
            self.callbacks.call("on_fit_end", self)
        except BaseException as e:
            self.callbacks.call("on_exception", self, e)
            if self.runtime.distributed and isinstance(e, RuntimeError):  # gloo/nccl: a peer died or failed
                raise TrainingError(f"Training stopped on process {self.runtime.rank} of {self.runtime.world_size}: another process "
                                    f"failed or stopped ({str(e).splitlines()[0][:200]}).",
                                    "see that process's error above" + (f"; continue from the last checkpoint with: transferkit fit "
                                    f"DATA --resume {self.run_dir}." if self.run_dir is not None else ".")) from None
            raise
        self.model.cpu().eval()
        self.model.info["world_size"] = self.runtime.world_size
        return self.state.history

    def run_epoch(self) -> None:
        st, cfg = self.state, self.cfg
        t0 = time.perf_counter()
        self.callbacks.call("on_epoch_start", self)  # before train mode is set: a callback may predict
        self.model.train()
        self.callbacks.call("on_train_mode", self)
        self.gen_epoch_state = self.gen.get_state()
        perm = torch.randperm(len(self.train_data), generator=self.gen)
        if self.lengths is not None:  # texts: batches of similar length (less padding)
            perm = inputs.length_grouped(perm, self.lengths, st.batch_size)
        if st.batch == 0:  # a resume mid-epoch keeps the losses of the epoch's first steps
            st.epoch_losses = []
        for b in range(st.batch, st.steps_per_epoch):
            self.batch_index = perm[b * st.batch_size : (b + 1) * st.batch_size]
            loss = self.train_step(self.batch_index)
            st.batch = b + 1
            self.callbacks.call("on_step_end", self, loss)
        record: dict[str, Any] = {
            "epoch": st.epoch + 1,
            "train_loss": float(np.mean(st.epoch_losses)) if st.epoch_losses else float("nan"),
            "frozen_groups": st.frozen_groups,
            "lr_head": float(self.optimizer.param_groups[-1]["lr"]),
        }
        if st.skipped_steps:
            record["skipped_steps"] = st.skipped_steps
        if st.micro_batch_size != math.ceil(st.batch_size / self.runtime.world_size):
            record["micro_batch_size"] = st.micro_batch_size
        self.validate(record)
        record["seconds"] = round(time.perf_counter() - t0, 3)
        st.history.append(record)
        st.epoch_losses = []
        st.epoch, st.batch = st.epoch + 1, 0
        self.callbacks.call("on_epoch_end", self, record)

    def train_step(self, idx: torch.Tensor) -> float:
        """One optimiser step on the global batch ``idx``; returns its mean loss."""
        st = self.state
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.forward_backward(idx)
        finite = bool(torch.isfinite(loss))
        if finite:
            norm = clip_gradients(self.model.parameters(), clip=self.runtime.clip_grad_norm_)
            finite = bool(torch.isfinite(norm))
        if not finite:
            where = (f"step {st.step + 1} (epoch {st.epoch + 1}, batch {st.batch + 1}, samples {idx[:8].tolist()}"
                     f"{'...' if len(idx) > 8 else ''})")
            if self.cfg.on_nan == "stop":
                raise TrainingError(f"Non-finite loss or gradients at {where}; no checkpoint was written from this state.",
                                    "lower --lr, check those samples, or pass --on-nan skip.")
            warnings.warn(f"skipped a non-finite step at {where}", stacklevel=2)
            self.optimizer.zero_grad(set_to_none=True)
            st.skipped_steps += 1
        else:
            self.optimizer.step()
        self.scheduler.step()
        st.step += 1
        value = float(self.runtime.mean(loss).item())
        st.epoch_losses.append(value)
        return value

    def forward_backward(self, idx: torch.Tensor) -> torch.Tensor:
        """Loss of one optimiser step, gradients accumulated over micro-batches of this process's
        slice of ``idx``. On out-of-memory the micro-batch is halved and the step retried (one
        process only): the effective batch stays the same."""
        rt, st = self.runtime, self.state
        local = rt.shard(idx)
        while True:
            micro = st.micro_batch_size
            try:
                step_loss = torch.zeros((), device=self.device)
                starts = range(0, len(local), micro)
                for s in starts:
                    part = local[s : s + micro]
                    batch = inputs.make_batch(self.backbone, self.x_train, part, self.device, self.augmenter)
                    target = self.y_train[part.to(self.device, non_blocking=True)]
                    # gradients are all-reduced once per step, after its last micro-batch
                    with rt.no_sync(self.forward_module, skip=s + micro < len(local)):
                        with rt.autocast():
                            feats, out = self.forward_module(batch)
                        loss = self.loss_fn(out.float(), target)
                        for term in self.loss_terms:
                            loss = loss + term(self, feats, out)
                        # each process's share of the global mean (data parallel averages over processes)
                        loss = loss * (len(part) * rt.world_size / len(idx))
                        # no finiteness check here (it would wait for the GPU): a non-finite loss gives
                        # non-finite gradients, which the step checks once
                        rt.backward(loss)
                    step_loss = step_loss + loss.detach()
                return step_loss
            except torch.OutOfMemoryError:
                self.optimizer.zero_grad(set_to_none=True)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if micro == 1 or rt.distributed:
                    raise TrainingError("Out of memory" + (" even with one sample per micro-batch." if micro == 1 else " (several processes)."),
                                        "use a smaller --image-size, --max-length or --batch-size, or a smaller backbone.") from None
                st.micro_batch_size = max(1, micro // 2)
                warnings.warn(f"out of memory: retrying with micro-batches of {st.micro_batch_size} (gradient accumulation keeps "
                              f"the batch at {st.batch_size})", stacklevel=2)

    # ------------------------------------------------------------------ validation
    def predict_val(self) -> np.ndarray:
        """Outputs on the validation set; with several processes each predicts its slice."""
        rt = self.runtime
        bs = self.cfg.eval_batch_size
        if not rt.distributed:
            return self.model.predict_outputs(None, prepared=self.x_val, batch_size=bs, device=self.device)
        n = len(self.val_data)
        bounds = np.linspace(0, n, rt.world_size + 1).round().astype(int)
        lo, hi = bounds[rt.rank], bounds[rt.rank + 1]
        local = self.model.predict_outputs(None, prepared=self.x_val[lo:hi], batch_size=bs, device=self.device)
        out = rt.gather(torch.from_numpy(local).to(self.device), np.diff(bounds).tolist())
        return out.cpu().numpy()

    def validate(self, record: dict[str, Any]) -> None:
        """The epoch's validation metrics into ``record`` and its selection score into the state."""
        self.state.score = None
        if self.val_data is not None:
            name, higher = self.metric
            m = task_metrics(self.model.task, self.val_data.targets, self.predict_val(), self.model.label_names,
                             self.model.head_spec.get("tasks"))
            record[f"val_{name}"] = m[name]
            if "macro_f1" in m:
                record["val_macro_f1"] = m["macro_f1"]
            if "task_scores" in m:  # multi-task: every task's own score, every epoch
                record["val_tasks"] = m["task_scores"]
            self.state.score = m[name] if higher else -m[name]
        self.callbacks.call("on_validation", self, record)


def train(model, train_data: TaskData, val_data: TaskData | None, cfg: FitConfig, *, run_dir: str | Path | None = None,
          progress: bool = True, resume: bool = False, callbacks: Sequence[Callback] = (), loss_terms: Sequence[LossTerm] = ()
          ) -> list[dict[str, Any]]:
    """Train ``model`` in place with the default callbacks plus ``callbacks``; returns the history.

    With ``run_dir``: ``metrics.jsonl``, ``steps.jsonl`` and checkpoints every ``cfg.checkpoint_every``
    and on SIGTERM/SIGINT (``Preempted``, exit 75); ``resume=True`` continues from the newest
    complete checkpoint so that a CPU run ends bit-for-bit as an uninterrupted one."""
    trainer = Trainer(model, cfg, callbacks=callbacks, loss_terms=loss_terms, run_dir=run_dir, resume=resume, progress=progress)
    return trainer.fit(train_data, val_data)
