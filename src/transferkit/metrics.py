"""Accuracy, macro-F1, per-class precision/recall and confusion matrix (scikit-learn)."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(range(len(label_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "n": int(len(y_true)),
    }


def multilabel_metrics(y_true: np.ndarray, scores: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    from sklearn.metrics import f1_score

    y_pred = (scores >= 0.5).astype(int)
    return {
        "accuracy": float((y_pred == y_true).all(1).mean()),  # exact match
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "n": int(len(y_true)),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    sq = (np.asarray(y_true, dtype=np.float64).reshape(-1) - np.asarray(y_pred, dtype=np.float64).reshape(-1)) ** 2
    return {
        "mse": float(mean_squared_error(y_true, y_pred)),
        "mse_se": float(sq.std(ddof=1) / np.sqrt(len(sq))) if len(sq) > 1 else float("nan"),  # standard error of the MSE
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)) if len(y_true) > 1 else float("nan"),
        "n": int(len(y_true)),
    }


def task_metrics(task: str, y_true: np.ndarray, outputs: np.ndarray, label_names: list[str], tasks: list[dict] | None = None) -> dict[str, Any]:
    """``outputs`` are logits (classification, multilabel) or values (regression); ``tasks``: the
    task list of a multi-task model."""
    if task == "multitask":
        from .multitask import multitask_metrics

        return multitask_metrics(tasks or [], y_true, outputs)
    if task == "classification":
        return classification_metrics(y_true, outputs.argmax(1), label_names)
    if task == "multilabel":
        return multilabel_metrics(y_true.astype(int), 1 / (1 + np.exp(-outputs)), label_names)
    return regression_metrics(y_true, outputs.reshape(-1))


def primary_metric(task: str) -> tuple[str, bool]:
    """The metric used for early stopping and comparison, and whether higher is better."""
    if task == "multitask":
        return ("mean_score", True)
    return ("mse", False) if task == "regression" else ("accuracy", True)
