"""Cheap empirical checks: leave-one-out kNN accuracy and cross-validated
logistic-regression accuracy on the features (a "linear probe" estimate, as
used as the reference in e.g. Kornblith, Shlens, Le, "Do Better ImageNet
Models Transfer Better?", CVPR 2019)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from .base import check_inputs, register_score

_BLOCK_ELEMS = 1 << 22  # at most ~4M similarities (32 MB) per block


@register_score("knn", "features", "leave-one-out k-NN accuracy, cosine similarity on centred features")
def knn_accuracy(features: Any, labels: Any, k: int | None = None) -> float:
    """Leave-one-out k-nearest-neighbour accuracy; higher is better.

    Features are centred on their mean and L2-normalised; similarity is cosine.
    Each sample is predicted by majority vote of its k nearest other samples,
    ties broken by the summed similarity. Default ``k = min(10, n_min - 1)``
    (at least 1) where n_min is the smallest class size: in leave-one-out a
    sample of the smallest class has only n_min - 1 same-class neighbours, so a
    larger k would let other classes outvote it by construction. Computed in
    row blocks, so memory is O(block * N), never N x N.
    """
    f, y, c = check_inputs(features, labels)
    n = len(y)
    if k is None:
        k = int(np.clip(np.bincount(y).min() - 1, 1, 10))
    if k < 1:
        raise ConfigError(f"knn k must be >= 1, got {k}.", "use k=None (automatic) or a positive integer.")
    k = min(int(k), n - 1)
    f = f - f.mean(axis=0)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    f = f / np.maximum(norms, np.finfo(np.float64).tiny)
    block = max(1, _BLOCK_ELEMS // n)
    correct = 0
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows = np.arange(stop - start)
        sim = f[start:stop] @ f.T  # [B, N]
        sim[rows, np.arange(start, stop)] = -np.inf  # leave the sample itself out
        idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # k most similar
        nb_sim = np.take_along_axis(sim, idx, axis=1)
        nb_lab = y[idx]
        votes = np.zeros((stop - start, c))
        sims = np.zeros((stop - start, c))
        np.add.at(votes, (rows[:, None], nb_lab), 1.0)
        np.add.at(sims, (rows[:, None], nb_lab), nb_sim)
        tied = votes == votes.max(axis=1, keepdims=True)
        pred = np.where(tied, sims, -np.inf).argmax(axis=1)
        correct += int(np.sum(pred == y[start:stop]))
    return correct / n


@register_score("linear_cv", "features", "cross-validated accuracy of logistic regression on standardised features")
def linear_cv(features: Any, labels: Any, folds: int = 5, seed: int = 0) -> float:
    """Mean k-fold accuracy of LogisticRegression(lbfgs, C=1, max_iter=1000) after
    StandardScaler (both fitted inside each training fold); higher is better.

    Stratified folds with ``min(folds, smallest class size)`` splits (at least 2).
    If a class has a single sample, stratification is impossible and plain
    shuffled KFold with ``min(folds, N)`` splits is used instead; a training fold
    holding only one class then predicts that class.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f, y, _ = check_inputs(features, labels)
    if folds < 2:
        raise ConfigError(f"linear_cv needs folds >= 2, got {folds}.", "use folds=5 (default) or another value >= 2.")
    n_min = int(np.bincount(y).min())
    if n_min >= 2:
        splitter = StratifiedKFold(n_splits=max(2, min(folds, n_min)), shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=min(folds, len(y)), shuffle=True, random_state=seed)
    accs = []
    for train, test in splitter.split(f, y):
        if len(np.unique(y[train])) < 2:
            pred = np.full(len(test), y[train][0])
        else:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
            pred = model.fit(f[train], y[train]).predict(f[test])
        accs.append(float(np.mean(pred == y[test])))
    return float(np.mean(accs))
