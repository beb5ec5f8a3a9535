"""Domain adaptation: the method protocol, its registry, and the engine-facing ``Adaptation``.

A method is a small class registered by name. It may add a loss on unlabelled target batches
(``loss``), extra trainable modules (``modules``), per-epoch work (``start_epoch``) and a final
step on the trained model (``finalize``, e.g. AdaBN). Methods combine with ``+``
(``adabn+dann+self-training``): their losses add up, their final steps run in order.

``Adaptation`` is what ``engine.train`` sees: it draws target batches, runs the target forward pass
(a separate pass, so BatchNorm normalises each domain with its own batch statistics), sums the
methods' losses and, at the end of each epoch, predicts the target set with the model as it would
be deployed (after every ``finalize``) to log target entropy and SND and to score the epoch for
model selection. Target labels are never read: a target set is only ``inputs``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import AdaptConfig, FitConfig
from ..data.dataset import TaskData
from ..errors import ConfigError
from ..inputs import autocast, make_batch, prepare, to_device
from ..registry import Registry

METHODS: Registry[type] = Registry("adaptation method")


def register_method(name: str):
    """Class decorator: ``@register_method("dann")``; duplicate names are rejected."""
    return METHODS.class_decorator(name)


class _LabelsHidden(TaskData):
    """A ``TaskData`` whose ``targets`` raise when read."""

    @property
    def targets(self):
        raise RuntimeError(f"the labels of {self.source or 'this set'} are hidden: they were read by mistake")

    @targets.setter
    def targets(self, value):
        self._hidden_targets = value

    def subset(self, idx) -> "TaskData":  # a part of a hidden set stays hidden (e.g. unusable samples left out)
        idx = np.asarray(idx, dtype=np.int64)
        out = _LabelsHidden([self.inputs[i] for i in idx], self._hidden_targets[idx], list(self.label_names), self.modality, self.task,
                            self.source)
        out.skipped = [] if self.skipped is not None else None
        return out


def hide_labels(data: TaskData) -> TaskData:
    """The same inputs with labels that raise when read: pass a target set through it to prove
    that adaptation and model selection never look at target labels."""
    return _LabelsHidden(list(data.inputs), data._hidden_targets if isinstance(data, _LabelsHidden) else data.targets,
                         list(data.label_names), data.modality, data.task, data.source)


def resolve_method(spec: str, backbone) -> str:
    """``auto`` -> ``adabn+self-training`` when the backbone has BatchNorm layers, else ``self-training``."""
    if spec != "auto":
        return spec
    from .methods.adabn import batchnorm_layers

    return "adabn+self-training" if batchnorm_layers(backbone) else "self-training"


def parse_methods(spec: str) -> list[str]:
    """``"adabn+dann"`` -> ``["adabn", "dann"]``; unknown names and empty parts are errors
    (``auto`` passes: it is resolved once the backbone is known)."""
    from . import methods as _  # noqa: F401  (registers the methods)

    if spec == "auto":
        return ["auto"]
    names = [p.strip() for p in str(spec).split("+")]
    if not all(names):
        raise ConfigError(f"Invalid --method {spec!r}.", "join method names with '+', e.g. adabn+dann.")
    for n in names:
        if n not in METHODS:
            raise ConfigError(f"Unknown adaptation method {n!r}.", f"use one of: {', '.join(METHODS.names())} (combine with '+').")
    if "source-only" in names and len(names) > 1:
        raise ConfigError("source-only cannot be combined with other methods.", "pass --method source-only alone.")
    return list(dict.fromkeys(names))


class Method:
    """Base of the adaptation methods: every hook is optional."""

    name = ""
    description = ""
    needs_target_batches = False

    def __init__(self, acfg: AdaptConfig):
        self.acfg = acfg
        self.modules = nn.ModuleList()
        self._logs: dict[str, list[float]] = {}

    def check(self, model) -> None:
        """Raise a ``ConfigError`` when the method cannot work with this model."""

    def start_epoch(self, ada: "Adaptation", model, epoch: int) -> None:
        pass

    def loss(self, b: "TargetBatch") -> torch.Tensor | None:
        return None

    def finalize(self, model, ada: "Adaptation") -> None:
        pass

    def log(self, **values: float) -> None:
        for k, v in values.items():
            self._logs.setdefault(k, []).append(float(v))

    def epoch_logs(self) -> dict[str, Any]:
        out = {k: float(np.mean(v)) for k, v in self._logs.items()}
        self._logs = {}
        return out


@dataclass
class TargetBatch:
    source_features: torch.Tensor
    source_logits: torch.Tensor
    target_features: torch.Tensor
    target_logits: torch.Tensor
    target_index: torch.Tensor  # positions in the target set
    progress: float  # fraction of training done, 0..1


class Adaptation:
    """The methods of one run, bound to a target set (inputs only) and a device."""

    def __init__(self, methods: list[Method], target: TaskData, acfg: AdaptConfig, cfg: FitConfig):
        self.methods = methods
        self.target_inputs = list(target.inputs)
        self.acfg, self.cfg = acfg, cfg
        self.selection = acfg.select
        self.target_probs: np.ndarray | None = None  # deployed model's predictions, refreshed each epoch
        self._gen = torch.Generator().manual_seed(cfg.seed + 7919)
        self._order: list[int] = []
        self.prepared = None
        self.device = torch.device("cpu")
        self.augmenter = None
        self.backbone = None

    @property
    def trains(self) -> bool:
        return any(m.needs_target_batches for m in self.methods)

    # ---------------------------------------------------------------- engine hooks
    def setup(self, model, device: torch.device, augmenter) -> None:
        for m in self.methods:
            m.check(model)
        self.backbone, self.device, self.augmenter = model.backbone, device, augmenter
        self.target_store(model.backbone)
        for m in self.methods:
            m.modules.to(device)

    def target_store(self, backbone):
        """The target inputs prepared for ``backbone`` (images decoded once), made on first use."""
        if self.prepared is None:
            self.prepared = to_device(prepare(backbone, self.target_inputs, device=self.device), self.device)
        return self.prepared

    def param_groups(self, cfg: FitConfig) -> list[dict[str, Any]]:
        params = [p for m in self.methods for p in m.modules.parameters()]
        return [{"name": "adaptation", "params": params, "lr": cfg.lr, "weight_decay": cfg.weight_decay}] if params else []

    def _next_index(self, n: int) -> torch.Tensor:
        while len(self._order) < n:
            self._order += torch.randperm(len(self.target_inputs), generator=self._gen).tolist()
        idx, self._order = self._order[:n], self._order[n:]
        return torch.tensor(idx, dtype=torch.long)

    def loss(self, model, source_features: torch.Tensor, source_logits: torch.Tensor, progress: float) -> torch.Tensor:
        zero = source_logits.float().sum() * 0.0
        if not self.trains:
            return zero
        idx = self._next_index(len(source_features))
        batch = make_batch(self.backbone, self.prepared, idx, self.device, self.augmenter)
        with autocast(self.device):
            ft = self.backbone(batch)
            lt = model.head(ft)
        b = TargetBatch(source_features.float(), source_logits.float(), ft.float(), lt.float(), idx, progress)
        total = zero
        for m in self.methods:
            part = m.loss(b)
            if part is not None:
                total = total + part
        return total

    def start_epoch(self, model, epoch: int) -> None:
        for m in self.methods:
            m.start_epoch(self, model, epoch)

    def end_epoch(self, model, epoch: int) -> dict[str, Any]:
        from .diagnostics import mean_entropy, snd

        logs: dict[str, Any] = {}
        for m in self.methods:
            logs.update({f"{m.name}_{k}": v for k, v in m.epoch_logs().items()})
        self.target_probs = self.predict_target(model)
        logs["target_entropy"] = mean_entropy(self.target_probs)
        logs["target_snd"] = snd(self.target_probs, seed=self.cfg.seed)
        if self.selection == "snd":
            logs["selection_score"] = logs["target_snd"]
        elif self.selection == "last":
            logs["selection_score"] = float(epoch + 1)
        return logs

    # ---------------------------------------------------------------- deployment
    def finalize(self, model) -> None:
        for m in self.methods:
            m.finalize(model, self)

    def deployed(self, model):
        """A copy of ``model`` after every method's final step (the model that would be saved)."""
        if not any(type(m).finalize is not Method.finalize for m in self.methods):
            return model
        twin = copy.deepcopy(model)
        self.finalize(twin)
        return twin

    @torch.no_grad()
    def predict_target(self, model) -> np.ndarray:
        """Class probabilities of the target set from the deployed model (labels are never read)."""
        was_training = model.training
        twin = self.deployed(model)
        logits = twin.predict_outputs(None, prepared=self.target_store(model.backbone), batch_size=self.cfg.eval_batch_size, device=self.device)
        model.train(was_training)
        return torch.softmax(torch.from_numpy(logits).float(), 1).numpy()


def rampup(progress: float) -> float:
    """The DANN schedule 2 / (1 + exp(-10 p)) - 1: 0 at the start, ~1 from a third of training on."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0
