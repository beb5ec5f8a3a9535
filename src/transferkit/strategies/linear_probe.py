"""Feature extraction: frozen backbone, cached embeddings, a new head trained on the cache.

The default head is scikit-learn's logistic regression (ridge for regression) on standardised
features, its regularisation chosen on the validation set, folded into one ``nn.Linear`` so the
saved model is plain safetensors. ``--head linear|mlp`` trains a torch head on the cached features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import FitConfig
from ..data.dataset import TaskData
from ..training import check_labels, seed_everything
from ..features import extract_features
from ..metrics import primary_metric, task_metrics
from ..model import TransferModel
from .base import make_backbone, new_model, register_strategy

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def _fold_standardisation(coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray, scale: np.ndarray):
    """Weights acting on standardised x -> weights acting on raw x."""
    w = coef / scale
    return w, intercept - (coef * (mean / scale)).sum(1)


def set_linear(linear: nn.Linear, w: np.ndarray, b: np.ndarray) -> None:
    """Copy fitted (numpy) weights and bias into ``linear``."""
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.asarray(w, dtype=np.float64)).float())
        linear.bias.copy_(torch.from_numpy(np.asarray(b, dtype=np.float64)).float())


def _sklearn_head(task: str, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier

    if task == "classification":
        return LogisticRegression(C=c, max_iter=3000, random_state=seed)
    if task == "multilabel":
        return OneVsRestClassifier(LogisticRegression(C=c, max_iter=3000, random_state=seed))
    return Ridge(alpha=1.0 / c)


_ABSENT = 1e4  # logit magnitude for a class (or multilabel column) without training examples


def _coef(est, task: str, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's coefficients as one row per output, in label order.

    sklearn only knows the classes present in the training labels (``classes_``); a class without
    training examples gets a zero row and a very negative bias so it is never predicted, and a
    multilabel column that is constant in training gets the constant (sklearn's _ConstantPredictor).
    """
    if task == "multilabel":
        rows, biases = [], []
        for e in est.estimators_:
            if hasattr(e, "coef_"):
                rows.append(np.atleast_2d(e.coef_)[0])
                biases.append(float(np.atleast_1d(e.intercept_)[0]))
            else:
                rows.append(np.zeros(est.n_features_in_))
                biases.append(_ABSENT if float(np.ravel(e.y_)[0]) >= 0.5 else -_ABSENT)
        return np.vstack(rows), np.asarray(biases, dtype=np.float64)
    coef = np.atleast_2d(est.coef_)
    intercept = np.atleast_1d(est.intercept_).astype(np.float64)
    if task != "classification":
        return coef, intercept
    if coef.shape[0] == 1:  # binary: sklearn keeps one row (classes_[1] against classes_[0])
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    classes = np.asarray(est.classes_, dtype=np.int64)
    if len(classes) != n_out or (classes != np.arange(n_out)).any():
        full_coef = np.zeros((n_out, coef.shape[1]))
        full_intercept = np.full(n_out, -_ABSENT)
        full_coef[classes], full_intercept[classes] = coef, intercept
        coef, intercept = full_coef, full_intercept
    return coef, intercept


def fit_probe_head(
    model: TransferModel, train_data: TaskData, val: TaskData | None, cfg: FitConfig, head: str = "logistic", progress: bool = False
) -> TransferModel:
    """Fit ``model.head`` on the frozen backbone's cached features (also used by fine-tuning's probe init)."""
    check_labels(model, train_data)  # before any work: never an index error or device assert later
    backbone = model.backbone
    stats: dict = {}
    kw = {"batch_size": cfg.eval_batch_size, "device": cfg.device, "stats": stats, "progress": progress}
    f_train = extract_features(backbone, train_data, **kw)
    f_val = extract_features(backbone, val, **kw) if val is not None and len(val) else None
    model.info["feature_cache"] = stats
    if head == "logistic":
        LinearProbe._fit_sklearn(model, f_train.numpy(), train_data, f_val, val, cfg)
    else:
        LinearProbe._fit_torch(model, f_train, train_data, f_val, val, cfg)
    return model


@register_strategy("linear-probe")
class LinearProbe:
    description = "feature extraction: frozen backbone, embeddings cached on disk, a new head (logistic regression by default)"

    def fit(self, train_data: TaskData, val: TaskData | None, cfg: FitConfig, *, run_dir: Path | None = None, progress: bool = True, resume: bool = False, callbacks=()) -> TransferModel:
        seed_everything(cfg.seed)
        backbone = make_backbone(cfg, pretrained=True)
        model = new_model(backbone, train_data, cfg, self.name, kind="mlp" if cfg.head == "mlp" else "linear")
        return fit_probe_head(model, train_data, val, cfg, cfg.head, progress).eval()

    @staticmethod
    def _fit_sklearn(model, x, data, f_val, val, cfg) -> None:
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(x)
        xs = scaler.transform(x)
        y = data.targets
        metric, higher = primary_metric(data.task)
        grid = C_GRID if f_val is not None else (0.1,)
        best = None
        for c in grid:
            est = _sklearn_head(data.task, c, cfg.seed).fit(xs, y)
            coef, intercept = _coef(est, data.task, data.num_outputs)
            if f_val is None:
                best = (None, c, coef, intercept)
                break
            out = scaler.transform(f_val.numpy()) @ coef.T + intercept
            score = task_metrics(data.task, val.targets, out, data.label_names)[metric]
            if best is None or (score > best[0] if higher else score < best[0]):
                best = (score, c, coef, intercept)
        _, c, coef, intercept = best
        w, b = _fold_standardisation(coef, intercept, scaler.mean_, np.where(scaler.scale_ > 0, scaler.scale_, 1.0))
        set_linear(model.head[-1], w, b)
        model.info["head_fit"] = {"kind": "logistic" if data.task != "regression" else "ridge", "C": c}

    @staticmethod
    def _fit_torch(model, f_train, data, f_val, val, cfg) -> None:
        from ..training.optim import adamw
        from ..training.trainer import loss_function, targets_tensor

        head = model.head
        opt = adamw([{"params": list(head.parameters()), "weight_decay": cfg.weight_decay}], cfg.lr)  # decay on every head weight
        loss_fn = loss_function(data.task, cfg.label_smoothing)
        y = targets_tensor(data.task, data.targets, torch.device("cpu"))
        gen = torch.Generator().manual_seed(cfg.seed)
        metric, higher = primary_metric(data.task)
        best, best_state = None, None
        epochs = max(cfg.epochs, 50)
        for _ in range(epochs):
            head.train()
            perm = torch.randperm(len(f_train), generator=gen)
            for s in range(0, len(perm), cfg.batch_size):
                idx = perm[s : s + cfg.batch_size]
                loss = loss_fn(head(f_train[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if f_val is not None:
                head.eval()
                with torch.no_grad():
                    score = task_metrics(data.task, val.targets, head(f_val).numpy(), data.label_names)[metric]
                if best is None or (score > best if higher else score < best):
                    best, best_state = score, {k: v.clone() for k, v in head.state_dict().items()}
        if best_state is not None:
            head.load_state_dict(best_state)
        model.info["head_fit"] = {"kind": cfg.head, "epochs": epochs}
