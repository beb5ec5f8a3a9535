"""Numerics of the transferability scores (transferkit.transferability)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from transferkit.errors import ConfigError, DataError
from transferkit.transferability import (
    SCORES,
    check_inputs,
    compute_scores,
    hscore,
    knn_accuracy,
    leep,
    linear_cv,
    logme,
    nce,
)
from transferkit.transferability.logme import target_evidence


def _linear_task(n=300, d=10, c=3, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, d))
    w = rng.normal(size=(d, c))
    y = (f @ w + noise * rng.normal(size=(n, c))).argmax(axis=1)
    return f, y


def _blobs(n=200, d=8, sep=6.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    f = rng.normal(size=(n, d))
    f[:, 0] += sep * y
    return f, y


def _source_probs(n, z=5, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, z))
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- LogME


def test_logme_true_labels_beat_shuffled():
    f, y = _linear_task()
    shuffled = np.random.default_rng(1).permutation(y)
    assert logme(f, y) > logme(f, shuffled) + 0.05


def _bishop_log_evidence(f, t, alpha, beta):
    """Bishop PRML eq. 3.86, written out directly."""
    n, m = f.shape
    a = alpha * np.eye(m) + beta * f.T @ f
    mn = beta * np.linalg.solve(a, f.T @ t)
    e = 0.5 * beta * np.sum((t - f @ mn) ** 2) + 0.5 * alpha * mn @ mn
    return 0.5 * m * np.log(alpha) + 0.5 * n * np.log(beta) - e - 0.5 * np.linalg.slogdet(a)[1] - 0.5 * n * np.log(2 * np.pi)


def test_logme_fixed_point_maximises_bishop_evidence():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(20, 3))
    t = f @ np.array([0.8, -0.5, 0.3]) + 0.3 * rng.normal(size=20)
    ev, alpha, beta = target_evidence(f, t)
    res = minimize(lambda p: -_bishop_log_evidence(f, t, *np.exp(p)), x0=[0.0, 0.0], method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 5000})
    a_opt, b_opt = np.exp(res.x)
    assert ev == pytest.approx(-res.fun, rel=1e-4)
    assert ev == pytest.approx(_bishop_log_evidence(f, t, alpha, beta), rel=1e-9)  # same formula
    assert alpha == pytest.approx(a_opt, rel=1e-4)
    assert beta == pytest.approx(b_opt, rel=1e-4)


def test_logme_wide_features_n_less_than_d():
    rng = np.random.default_rng(4)
    f = rng.normal(size=(15, 40))
    y = np.arange(15) % 3
    value = logme(f, y)
    assert math.isfinite(value)
    # the economy-SVD evidence equals the full D x D formula at the same (alpha, beta)
    t = (y == 0).astype(float)
    ev, alpha, beta = target_evidence(f, t)
    assert ev == pytest.approx(_bishop_log_evidence(f, t, alpha, beta), rel=1e-9)


# ---------------------------------------------------------------- H-score


def test_hscore_hand_computed():
    # centred f = [-3, -1, 1, 3]: Cov f = 20/4 = 5; class means -2, 2: Cov E[f|y] = 4; H = 4/5
    f = np.array([[1.0], [3.0], [5.0], [7.0]])
    assert hscore(f, [0, 0, 1, 1], shrinkage=None) == pytest.approx(0.8, abs=1e-12)
    assert hscore(f, [0, 0, 1, 1], shrinkage=0) == pytest.approx(0.8, abs=1e-12)
    # fixed shrinkage a: ((1-a) 4) / ((1-a) 5 + a 5) = 0.8 (1 - a) in 1-D
    assert hscore(f, [0, 0, 1, 1], shrinkage=0.25) == pytest.approx(0.6, abs=1e-12)


def test_hscore_separating_features_beat_noise():
    f, y = _blobs()
    noise = np.random.default_rng(5).normal(size=f.shape)
    assert hscore(f, y) > 0.5 > 0.1 > hscore(noise, y)
    assert hscore(f, y, shrinkage=None) > hscore(noise, y, shrinkage=None)


# ---------------------------------------------------------------- LEEP / NCE

THETA = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
Y4 = [0, 0, 1, 1]


def test_leep_hand_computed():
    # P(y, z) * 4: y0 -> [1.3, 0.7], y1 -> [0.5, 1.5]; P(z) * 4 = [1.8, 2.2]
    p0 = [1.3 / 1.8, 0.7 / 2.2]  # P(y=0 | z)
    p1 = [0.5 / 1.8, 1.5 / 2.2]  # P(y=1 | z)
    eep = [
        0.9 * p0[0] + 0.1 * p0[1],
        0.4 * p0[0] + 0.6 * p0[1],
        0.2 * p1[0] + 0.8 * p1[1],
        0.3 * p1[0] + 0.7 * p1[1],
    ]
    assert leep(THETA, Y4) == pytest.approx(np.mean(np.log(eep)), abs=1e-9)


def test_nce_hand_computed_and_perfect_source():
    # z = [0, 1, 1, 1]: P(y0,z0) = 1/4, P(y0,z1) = 1/4, P(y1,z1) = 1/2; P(z1) = 3/4
    expected = 0.25 * np.log(1.0) + 0.25 * np.log(1 / 3) + 0.5 * np.log(2 / 3)
    assert nce(THETA, Y4) == pytest.approx(expected, abs=1e-9)
    perfect = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    assert nce(perfect, Y4) == 0.0
    assert nce(perfect, Y4) > nce(THETA, Y4)


# ---------------------------------------------------------------- kNN / linear CV


def test_empirical_scores_blobs_and_random_labels():
    f, y = _blobs()
    assert knn_accuracy(f, y) > 0.95
    assert linear_cv(f, y) > 0.95
    random_y = np.random.default_rng(6).permutation(y)
    assert knn_accuracy(f, random_y) < 0.7
    assert linear_cv(f, random_y) < 0.7


def test_knn_blocks_match_one_block(monkeypatch):
    from transferkit.transferability import empirical

    f, y = _linear_task(n=120)
    full = knn_accuracy(f, y, k=5)
    monkeypatch.setattr(empirical, "_BLOCK_ELEMS", 7 * 120)  # 7 rows per block
    assert knn_accuracy(f, y, k=5) == full


def test_singleton_class_is_handled():
    f, y = _blobs(n=40)
    y = y.copy()
    y[0] = 2  # a class with one sample
    assert 0.0 <= knn_accuracy(f, y) <= 1.0
    assert 0.0 <= linear_cv(f, y) <= 1.0
    assert math.isfinite(logme(f, y)) and math.isfinite(hscore(f, y))


# ---------------------------------------------------------------- invariance + compute_scores


def test_feature_scores_invariant_to_label_names_and_row_order():
    f, y = _linear_task(n=150)
    names = np.array(["zeta", "alpha", "mid"])[y]  # ints -> strings in another order
    perm = np.random.default_rng(7).permutation(len(y))
    feature_scores = [s for s in SCORES.names() if SCORES.get(s).needs == "features"]
    assert sorted(feature_scores) == ["hscore", "knn", "linear_cv", "logme"]
    for name in feature_scores:
        fn = SCORES.get(name).fn
        base = fn(f, y)
        if name in ("knn", "linear_cv"):
            assert fn(f, names) == base, name
        else:
            assert fn(f, names) == pytest.approx(base, rel=1e-9, abs=1e-12), name
            assert fn(f[perm], y[perm]) == pytest.approx(base, rel=1e-6), name
    probs = _source_probs(len(y))
    for fn in (leep, nce):
        assert fn(probs, names) == pytest.approx(fn(probs, y), abs=1e-9)


def test_compute_scores_names_and_torch_inputs():
    f, y = _linear_task(n=120)
    probs = _source_probs(len(y))
    with_src = compute_scores(torch.from_numpy(f).float(), torch.from_numpy(y), source_probs=torch.from_numpy(probs))
    assert sorted(with_src) == ["hscore", "knn", "leep", "linear_cv", "logme", "nce"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in with_src.values())
    without = compute_scores(f, y)
    assert sorted(without) == ["hscore", "knn", "linear_cv", "logme"]
    assert without["logme"] == pytest.approx(logme(f, y))
    assert with_src["logme"] == pytest.approx(without["logme"], rel=1e-5)  # float32 round trip
    assert compute_scores(f, y, names=["hscore"]) == {"hscore": hscore(f, y)}
    with pytest.raises(ConfigError, match="nope"):
        compute_scores(f, y, names=["nope"])


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_data_error():
    f = np.random.default_rng(8).normal(size=(6, 3))
    with pytest.raises(DataError, match="at least 2 classes, got 1"):
        logme(f, ["cat"] * 6)
    with pytest.raises(DataError, match="more samples than classes"):
        check_inputs(f[:3], ["a", "b", "c"])
    bad = f.copy()
    bad[1, 2] = np.nan
    bad[4, 0] = np.inf
    with pytest.raises(DataError, match="NaN or inf in 2 of 6 rows"):
        hscore(bad, [0, 1] * 3)
    with pytest.raises(DataError, match="6 rows but labels have 5"):
        knn_accuracy(f, [0, 1, 0, 1, 0])
    with pytest.raises(DataError, match="2-D"):
        check_inputs(f[:, 0], [0, 1] * 3)
    with pytest.raises(DataError, match="zero rows"):
        check_inputs(np.zeros((0, 3)), [])
    with pytest.raises(DataError, match="sum to 1"):
        leep(np.full((6, 2), 0.7), [0, 1] * 3)
    with pytest.raises(DataError, match="negative"):
        nce(np.tile([[1.5, -0.5]], (6, 1)), [0, 1] * 3)
