"""Multi-task learning: one shared backbone, one head per label column, trained jointly.

A multi-task ``TaskData`` (``task="multitask"``) keeps every task's targets side by side in one
float matrix (a class index, a value, or a multilabel row per task; NaN where a row has no label
for that task) and the task list in ``data.tasks``. ``MultiTaskHead`` outputs every task's logits
side by side and computes the masked loss: rows without a label for a task add nothing to it.
Tasks are weighted by fixed weights or by learned uncertainty (Kendall, Gal and Cipolla, 2018:
``sum_t exp(-s_t) L_t + s_t``, one learned ``s_t`` per task).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data.dataset import TASKS, TaskData, _load_manifest, _read_rows, _targets
from .errors import ConfigError, DataError

WEIGHTINGS = ("uncertainty", "fixed")


def parse_tasks(spec: str | dict[str, str] | list[str]) -> dict[str, str]:
    """``"category,subcategory:classification,rating:regression"`` -> {column: task}; the task type
    defaults to classification."""
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec) if p.strip()]
        items = [tuple(p.split(":", 1)) if ":" in p else (p, "classification") for p in parts]
    out: dict[str, str] = {}
    for name, kind in items:
        name, kind = name.strip(), kind.strip()
        if kind not in TASKS:
            raise ConfigError(f"--tasks: unknown task type {kind!r} for column {name!r}.", f"use one of: {', '.join(TASKS)}.")
        if name in out:
            raise ConfigError(f"--tasks names column {name!r} twice.", "name each label column once.")
        out[name] = kind
    if len(out) < 2:
        raise ConfigError("Multi-task learning needs at least 2 label columns.", "pass --tasks col1,col2 (type with col:regression).")
    return out


def load_multitask(path: str | Path, tasks: str | dict[str, str] | list[str], *, text_column: str | None = None,
                   path_column: str | None = None) -> TaskData:
    """A CSV/TSV/JSONL manifest with several label columns; an empty cell = no label for that task."""
    path = Path(path)
    tasks = parse_tasks(tasks)
    if not path.is_file():
        raise DataError(f"Multi-task data {path} is not a manifest file.", "pass a CSV/TSV/JSONL file with one column per task.")
    base = _load_manifest(path, next(iter(tasks)), text_column, path_column, "classification", "|", None, unlabelled=True)
    rows = _read_rows(path)
    blocks, specs = [], []
    for name, kind in tasks.items():
        if name not in rows[0]:
            raise DataError(f"{path} has no column {name!r} (columns: {', '.join(rows[0])}).", "fix the name in --tasks.")
        values = [r.get(name) for r in rows]
        have = [i for i, v in enumerate(values) if v is not None and str(v).strip()]
        if not have:
            raise DataError(f"{path} column {name!r} has no labels.", "fill some in, or drop the task from --tasks.")
        t, names = _targets([values[i] for i in have], kind, "|", f"{path} column {name!r}", None)
        if kind == "classification" and len(names) < 2:
            raise DataError(f"{path} column {name!r} has only 1 class ({names[0]}).", "a classification task needs at least 2.")
        width = len(names) if kind == "multilabel" else 1
        block = np.full((len(rows), width), np.nan, dtype=np.float32)
        block[have] = np.asarray(t, dtype=np.float32).reshape(len(have), width)
        blocks.append(block)
        specs.append({"name": name, "task": kind, "label_names": list(names) if kind != "regression" else [name],
                      "labelled": len(have)})
    data = TaskData(base.inputs, np.concatenate(blocks, axis=1), [s["name"] for s in specs], base.modality, "multitask", str(path))
    data.tasks = specs
    return data


def _widths(spec: dict[str, Any]) -> tuple[int, int]:
    """(output columns, target columns) of one task."""
    n = len(spec["label_names"])
    if spec["task"] == "classification":
        return n, 1
    if spec["task"] == "multilabel":
        return n, n
    return 1, 1


def slices(tasks: list[dict[str, Any]]) -> list[tuple[slice, slice]]:
    """Per task: its columns in the outputs and in the targets."""
    out, o, t = [], 0, 0
    for spec in tasks:
        wo, wt = _widths(spec)
        out.append((slice(o, o + wo), slice(t, t + wt)))
        o, t = o + wo, t + wt
    return out


def multitask_spec(d_in: int, tasks: list[dict[str, Any]], dropout: float, weighting: str = "uncertainty",
                   weights: dict[str, float] | None = None, label_smoothing: float = 0.0) -> dict[str, Any]:
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"Unknown --mt-weighting {weighting!r}.", f"use one of: {', '.join(WEIGHTINGS)}.")
    names = [t["name"] for t in tasks]
    unknown = sorted(set(weights or {}) - set(names))
    if unknown:
        raise ConfigError(f"--mt-weights names {unknown[0]!r}, which is not a task.", f"use task names: {', '.join(names)}.")
    w = [float((weights or {}).get(n, 1.0)) for n in names]
    if any(x < 0 for x in w):
        raise ConfigError("--mt-weights must be >= 0.", "pass non-negative task weights.")
    tasks = [{k: t[k] for k in ("name", "task", "label_names")} for t in tasks]
    out = sum(_widths(t)[0] for t in tasks)
    return {"kind": "multitask", "in": d_in, "out": out, "dropout": dropout, "tasks": tasks, "weighting": weighting,
            "weights": w, "label_smoothing": label_smoothing}


class MultiTaskHead(nn.Module):
    """One linear head per task on the shared features; outputs side by side."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.tasks = spec["tasks"]
        self.weighting = spec.get("weighting", "uncertainty")
        self.label_smoothing = float(spec.get("label_smoothing", 0.0))
        p, d_in = float(spec.get("dropout", 0.0)), int(spec["in"])
        self.heads = nn.ModuleList(nn.Sequential(nn.Dropout(p), nn.Linear(d_in, _widths(t)[0])) for t in self.tasks)
        self.register_buffer("weights", torch.tensor(spec.get("weights") or [1.0] * len(self.tasks), dtype=torch.float32))
        # log-variances s_t of the uncertainty weighting (unused, and kept at 0, with fixed weights)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)), requires_grad=self.weighting == "uncertainty")
        self._slices = slices(self.tasks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([h(x) for h in self.heads], dim=1)

    def task_losses(self, out: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor | None]:
        """Per task: the mean loss over the rows labelled for it (None when the batch has none)."""
        losses: list[torch.Tensor | None] = []
        for spec, (so, st) in zip(self.tasks, self._slices):
            o, y = out[:, so], target[:, st]
            have = ~torch.isnan(y).any(dim=1)
            if not bool(have.any()):
                losses.append(None)
                continue
            o, y = o[have], y[have]
            if spec["task"] == "classification":
                losses.append(F.cross_entropy(o, y[:, 0].long(), label_smoothing=self.label_smoothing))
            elif spec["task"] == "multilabel":
                losses.append(F.binary_cross_entropy_with_logits(o, y))
            else:
                losses.append(F.mse_loss(o, y))
        return losses

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = out.new_zeros(())
        for i, task_loss in enumerate(self.task_losses(out, target)):
            if task_loss is None:
                continue
            if self.weighting == "uncertainty":
                total = total + torch.exp(-self.log_vars[i]) * task_loss + self.log_vars[i]
            else:
                total = total + self.weights[i] * task_loss
        return total


def multitask_metrics(tasks: list[dict[str, Any]], y_true: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
    """Each task's metrics on its labelled rows (``tasks``), its score (``task_scores``: accuracy for
    classification, exact match for multilabel, R^2 for regression) and ``mean_score``, their mean:
    the early-stopping score."""
    from .metrics import task_metrics

    per, scores = {}, {}
    for spec, (so, st) in zip(tasks, slices(tasks)):
        y = np.asarray(y_true, dtype=np.float64)[:, st]
        have = ~np.isnan(y).any(axis=1)
        if not have.any():
            continue
        target = y[have, 0].astype(np.int64) if spec["task"] == "classification" else (y[have] if spec["task"] == "multilabel" else y[have, 0])
        m = task_metrics(spec["task"], target, outputs[have][:, so], spec["label_names"])
        per[spec["name"]] = m
        scores[spec["name"]] = m["r2"] if spec["task"] == "regression" else m["accuracy"]
    return {"mean_score": float(np.mean(list(scores.values()))) if scores else float("nan"), "task_scores": scores,
            "tasks": per, "n": int(len(y_true))}


def format_predictions(tasks: list[dict[str, Any]], row: np.ndarray) -> dict[str, Any]:
    """One input's outputs -> {task: {"label", "probabilities"} | {"labels", ...} | {"value"}}."""
    out = {}
    for spec, (so, _) in zip(tasks, slices(tasks)):
        r, names = row[so], spec["label_names"]
        if spec["task"] == "classification":
            p = np.exp(r - r.max())
            p /= p.sum()
            out[spec["name"]] = {"label": names[int(p.argmax())], "probabilities": {n: float(v) for n, v in zip(names, p)}}
        elif spec["task"] == "multilabel":
            p = 1 / (1 + np.exp(-r))
            out[spec["name"]] = {"labels": [n for n, v in zip(names, p) if v >= 0.5], "probabilities": {n: float(v) for n, v in zip(names, p)}}
        else:
            out[spec["name"]] = {"value": float(r[0])}
    return out
