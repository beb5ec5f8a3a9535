"""Model stacking: several frozen pretrained backbones combined into one model.

``--strategy stack --backbones efficientnet_lite0,efficientnet_lite2`` (a cut layer as
``NAME@LAYER``, e.g. ``minilm,minilm@encoder.layer.3``) builds a ``ConcatBackbone`` and trains a
head on its members' cached features (``extract_features`` per member), in one of two modes:

- ``--stack concat``: one linear head (logistic regression; ridge for regression) on the members'
  features side by side, each block standardised and scaled by ``1/sqrt(dim)`` (no second
  standardisation, so the scaling holds under the L2 penalty). C is chosen on the validation set,
  or by ``--stack-folds`` cross-validation on the training set when there is none.
- ``--stack oof``: stacked generalisation (classification). A base learner per member (standardised
  logistic regression, its C chosen by the same cross-validation) gives class probabilities for
  each training row from the fold model that never saw that row (``cross_val_predict``); a
  multinomial logistic regression (the meta-learner) is fit on the members' out-of-fold
  probabilities side by side; the base learners are then refit on all training rows. The model is
  the ``ConcatBackbone`` + a ``StackHead`` (per-member linear -> softmax -> concatenated -> meta
  linear), so it saves and loads like any other.

``base_estimator``/``meta_estimator`` are module attributes, so tests can swap in recording ones.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..backbones import create_backbone
from ..backbones.base import Backbone
from ..backbones.concat import ConcatBackbone
from ..backbones.layers import CutBackbone
from ..config import FitConfig
from ..data.dataset import TaskData
from ..training import check_labels, seed_everything
from ..errors import ConfigError, DataError
from ..features import extract_features, extract_layer_features
from ..heads import head_spec, make_head
from ..metrics import primary_metric, task_metrics
from ..model import TransferModel
from .base import register_strategy
from .linear_probe import C_GRID, _coef, _fold_standardisation, _sklearn_head, set_linear

META_C_GRID = (0.1, 1.0, 10.0, 100.0)


class StackHead(nn.Module):
    """Per-member linear heads on the member's slice of the features -> softmax -> side by side ->
    one meta linear layer (logits over the classes)."""

    def __init__(self, dims: list[int], n_classes: int):
        super().__init__()
        self.dims = [int(d) for d in dims]
        self.base = nn.ModuleList(nn.Linear(d, n_classes) for d in self.dims)
        self.meta = nn.Linear(len(self.dims) * n_classes, n_classes)

    def member_probabilities(self, features: torch.Tensor) -> list[torch.Tensor]:
        parts = torch.split(features.float(), self.dims, dim=-1)
        return [torch.softmax(lin(p), dim=-1) for lin, p in zip(self.base, parts)]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.meta(torch.cat(self.member_probabilities(features), dim=-1))


def stack_spec(dims: list[int], n_classes: int) -> dict:
    return {"kind": "stack", "in": int(sum(dims)), "out": int(n_classes), "dims": [int(d) for d in dims]}


# ---------------------------------------------------------------------------- members
def parse_members(spec: str | None) -> list[tuple[str, str | None]]:
    """``"a,b@layer"`` -> ``[("a", None), ("b", "layer")]``."""
    names = [s.strip() for s in str(spec or "").split(",") if s.strip()]
    if len(names) < 2:
        raise ConfigError(f"--strategy stack needs two or more backbones in --backbones (got {spec!r}).",
                          "pass e.g. --backbones efficientnet_lite0,efficientnet_lite2 or minilm,minilm@encoder.layer.3.")
    seen = [n for i, n in enumerate(names) if n in names[:i]]
    if seen:
        raise ConfigError(f"--backbones lists {seen[0]!r} twice.", "list each backbone (or NAME@LAYER) once.")
    out = []
    for n in names:
        base, sep, layer = n.rpartition("@")
        out.append((base, layer) if sep and base and layer and "/" not in layer else (n, None))
    return out


def stack_backbone(cfg: FitConfig, pretrained: bool = True) -> ConcatBackbone:
    if cfg.layer:
        raise ConfigError("--layer does not apply to --strategy stack.", "name a cut layer per member: --backbones minilm,minilm@encoder.layer.3.")
    members = [
        create_backbone(name, pretrained=pretrained, weights=cfg.backbone_weights, image_size=cfg.image_size,
                        pooling=cfg.pooling, max_length=cfg.max_length, layer=layer, window=cfg.audio_window,
                        eval_windows=cfg.audio_eval)
        for name, layer in parse_members(cfg.backbones)
    ]
    return ConcatBackbone(members, normalise=True)


def member_features(view: Backbone, data: TaskData, **kw) -> torch.Tensor:
    """Cached features of one member; a cut member's come from its inner backbone's layer (the same
    numbers, and the cache entry ``transferkit rank --layers`` writes)."""
    if isinstance(view, CutBackbone):
        return extract_layer_features(view.inner, data, [view.layer], **kw)[view.layer]
    return extract_features(view, data, **kw)


# ---------------------------------------------------------------------------- cross-validation
def make_folds(y: np.ndarray, task: str, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (classification) K folds, shuffled with ``seed``; fewer folds when the largest
    class has fewer than ``k`` rows."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(y)
    if task == "classification":
        k = min(k, int(np.bincount(y).max()))
        if k < 2:
            raise DataError(f"Cross-validation needs two rows of some class (got {n} rows).", "add training examples.")
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class has only N members"
            return [(tr, te) for tr, te in splitter.split(np.zeros(n), y)]
    if n < 2:
        raise DataError(f"Cross-validation needs at least two training rows (got {n}).", "add training examples.")
    return list(KFold(n_splits=min(k, n), shuffle=True, random_state=seed).split(np.zeros(n)))


def base_estimator(c: float, seed: int):
    """A member's base learner: logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()), ("logreg", LogisticRegression(C=c, max_iter=3000, random_state=seed))])


def meta_estimator(c: float, seed: int):
    """The meta-learner: multinomial logistic regression on the members' probabilities."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=3000, random_state=seed)


def class_proba(est, x: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` with one column per class in label order (0 for classes the fit never saw)."""
    out = np.zeros((len(x), n_classes))
    out[:, np.asarray(est.classes_, dtype=np.int64)] = est.predict_proba(x)
    return out


def out_of_fold_proba(x: np.ndarray, y: np.ndarray, n_classes: int, folds, make_estimator) -> np.ndarray:
    """Row ``i``'s class probabilities from the model fit on the folds without ``i``."""
    oof = np.full((len(y), n_classes), np.nan)
    for tr, te in folds:
        est = make_estimator().fit(x[tr], y[tr])
        oof[te] = class_proba(est, x[te], n_classes)
    if np.isnan(oof).any():
        raise ValueError("the folds do not cover every row")
    return oof


def _accuracy_then_loss(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    acc = float((p.argmax(1) == y).mean())
    return acc, -float(np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1))))


def _fold_base(est, bb: ConcatBackbone, i: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted base pipeline (scaler + logistic regression on raw member features) -> weights on
    member ``i``'s slice of the concat backbone's (normalised) output."""
    coef, intercept = _coef(est[-1], "classification", n_classes)
    scaler = est[0]
    sl = bb.slices()[i]
    if bb.normalise:
        mu, sd, w = (t[sl].double().numpy() for t in (bb.feat_mean, bb.feat_std, bb.block_weight))
    else:
        mu, sd, w = np.zeros(bb.dims[i]), np.ones(bb.dims[i]), np.ones(bb.dims[i])
    # the scaler folded into weights on raw member features, then raw = out * sd / w + mu
    w_raw, b_raw = _fold_standardisation(coef, intercept, scaler.mean_, np.where(scaler.scale_ > 0, scaler.scale_, 1.0))
    return w_raw * (sd / w)[None, :], b_raw + w_raw @ mu


# ---------------------------------------------------------------------------- the strategy
@register_strategy("stack")
class Stack:
    description = "model stacking: several frozen backbones (--backbones a,b); --stack concat (one head on their features) | oof (meta-learner)"

    def fit(self, train: TaskData, val: TaskData | None, cfg: FitConfig, *, run_dir: Path | None = None, progress: bool = True,
            resume: bool = False, callbacks=()) -> TransferModel:
        if cfg.stack == "oof" and train.task != "classification":
            raise ConfigError(f"--stack oof needs single-label classification (the task is {train.task}).", "use --stack concat.")
        seed_everything(cfg.seed)
        backbone = stack_backbone(cfg)
        if backbone.modality != train.modality:
            raise DataError(f"Backbones {cfg.backbones!r} take {backbone.modality} inputs but the data holds {train.modality}s.",
                            "stack image backbones for images and text backbones for texts.")
        if cfg.stack == "oof":
            spec = stack_spec(backbone.dims, train.num_outputs)
            head = StackHead(backbone.dims, train.num_outputs)
        else:
            spec = head_spec("linear", backbone.num_features, train.num_outputs, cfg.dropout)
            head = make_head(spec)
        model = TransferModel(backbone, head, head_spec=spec, task=train.task, label_names=train.label_names, strategy=self.name)
        check_labels(model, train)
        stats: dict = {}
        kw = {"batch_size": cfg.eval_batch_size, "device": cfg.device, "stats": stats, "progress": progress}
        views = [backbone.member_view(i) for i in range(len(backbone.members))]
        f_train = [member_features(v, train, **kw) for v in views]
        f_val = [member_features(v, val, **kw) for v in views] if val is not None and len(val) else None
        backbone.set_normalisation(f_train)
        folds = make_folds(train.targets, train.task, cfg.stack_folds, cfg.seed)
        info = {"mode": cfg.stack, "members": [m.name for m in backbone.members], "folds": len(folds)}
        from threadpoolctl import threadpool_limits

        # one BLAS thread: these matrices are small, and on a busy 2-core machine two OpenBLAS
        # threads made each logistic regression 10-100x slower (15 s instead of 0.16 s on emoji)
        with threadpool_limits(limits=1, user_api="blas"):
            if cfg.stack == "oof":
                info.update(fit_oof(model, f_train, train, f_val, val, folds, cfg.seed))
            else:
                info.update(fit_concat(model, f_train, train, f_val, val, folds, cfg.seed))
        model.info["feature_cache"] = stats
        model.info["stack"] = info
        return model.eval()


def fit_concat(model: TransferModel, f_train, train: TaskData, f_val, val: TaskData | None, folds, seed: int) -> dict:
    """One logistic regression (ridge) on the concat backbone's output, C on val or by cross-validation."""
    bb: ConcatBackbone = model.backbone
    x = bb.combine(f_train).double().numpy()
    y = train.targets
    task, n_out = train.task, train.num_outputs
    metric, higher = primary_metric(task)
    # each block has squared norm ~1 instead of ~dim: the linear probe's grid, rescaled to match
    scale = float(np.mean(bb.dims)) if bb.normalise else 1.0
    grid = [c * scale for c in C_GRID]

    def fit(c, rows):
        return _coef(_sklearn_head(task, c, seed).fit(x[rows], y[rows]), task, n_out)

    scores = []
    if f_val is not None:
        xv = bb.combine(f_val).double().numpy()
        for c in grid:
            coef, b = fit(c, slice(None))
            scores.append(task_metrics(task, val.targets, xv @ coef.T + b, train.label_names)[metric])
        where = "val"
    else:
        for c in grid:
            out = np.zeros((len(y), n_out))
            for tr, te in folds:
                coef, b = fit(c, tr)
                out[te] = x[te] @ coef.T + b
            scores.append(task_metrics(task, y, out, train.label_names)[metric])
        where = "cv"
    best = int(np.argmax(scores) if higher else np.argmin(scores))
    coef, b = fit(grid[best], slice(None))
    set_linear(model.head[-1], coef, b)
    return {"C": grid[best], "C_grid": grid, "selected_on": where, f"{where}_{metric}": [round(float(s), 4) for s in scores]}


def fit_oof(model: TransferModel, f_train, train: TaskData, f_val, val: TaskData | None, folds, seed: int) -> dict:
    """Stacked generalisation: out-of-fold base probabilities -> meta-learner; base learners refit on all rows."""
    bb: ConcatBackbone = model.backbone
    head: StackHead = model.head
    y, n = train.targets, train.num_outputs
    oof, finals, chosen, member_acc = [], [], [], []
    for i, f in enumerate(f_train):
        x = f.double().numpy()
        best = None
        for c in C_GRID:
            p = out_of_fold_proba(x, y, n, folds, lambda c=c: base_estimator(c, seed))
            score = _accuracy_then_loss(p, y)
            if best is None or score > best[0]:
                best = (score, c, p)
        (acc, _), c, p = best
        oof.append(p)
        chosen.append(c)
        member_acc.append(round(acc, 4))
        finals.append(base_estimator(c, seed).fit(x, y))
    meta_x = np.hstack(oof)
    scores = []
    if f_val is not None:
        meta_v = np.hstack([class_proba(est, f.double().numpy(), n) for est, f in zip(finals, f_val)])
        for c in META_C_GRID:
            scores.append(_accuracy_then_loss(class_proba(meta_estimator(c, seed).fit(meta_x, y), meta_v, n), val.targets))
        where = "val"
    else:
        for c in META_C_GRID:
            scores.append(_accuracy_then_loss(out_of_fold_proba(meta_x, y, n, folds, lambda c=c: meta_estimator(c, seed)), y))
        where = "cv"
    meta_c = META_C_GRID[max(range(len(scores)), key=lambda k: scores[k])]
    meta = meta_estimator(meta_c, seed).fit(meta_x, y)
    for i, est in enumerate(finals):
        set_linear(head.base[i], *_fold_base(est, bb, i, n))
    set_linear(head.meta, *_coef(meta, "classification", n))
    return {"member_C": chosen, "member_oof_accuracy": member_acc, "meta_C": meta_c, "meta_selected_on": where,
            f"meta_{where}_accuracy": [round(s[0], 4) for s in scores]}
