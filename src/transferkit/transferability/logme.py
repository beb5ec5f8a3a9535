"""LogME: log of the maximum Bayesian evidence of a linear model on the features.

You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for
Transfer Learning", ICML 2021.

For each class c the one-hot column y_c is modelled as ``y = F w + noise`` with
prior ``w ~ N(0, alpha^-1 I)`` and noise precision ``beta``. ``alpha`` and
``beta`` maximise the evidence p(y | F, alpha, beta) by the paper's fixed-point
iteration (MacKay's updates, Bishop PRML 3.5.2); the score is the mean over
classes of the maximised log evidence divided by N.

The features are used as given: no centring or standardisation happens here
(scaling the features changes the score, as in the paper's implementation).
The economy SVD ``F = U diag(s) V^T`` is computed once, so the cost is
O(N D min(N, D)) and N < D is handled exactly (the D - rank(F) directions
with zero eigenvalue only contribute through ``alpha``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import check_inputs, register_score

_TINY = np.finfo(np.float64).tiny


def _evidence_from_svd(
    s: np.ndarray, z: np.ndarray, y2: float, n: int, d: int, tol: float = 1e-4, max_iter: int = 100
) -> tuple[float, float, float]:
    """Maximised log evidence for one target, given the singular values ``s`` of F,
    ``z = U^T y`` and ``y2 = |y|^2``. Returns ``(log_evidence, alpha, beta)``."""
    lam = s**2  # eigenvalues of F^T F (the other d - len(s) are 0)
    k = len(s)
    # part of |y|^2 outside the column space of F (exactly 0 when U is square)
    out_of_span = 0.0 if k >= n else max(y2 - float(z @ z), 0.0)

    def stats(alpha: float, beta: float):
        den = alpha + beta * lam
        gamma = float(np.sum(beta * lam / den))  # effective number of parameters
        m2 = float(np.sum((beta * s * z / den) ** 2))  # |m|^2, m = posterior mean of w
        res2 = float(np.sum((alpha * z / den) ** 2)) + out_of_span  # |F m - y|^2
        return den, gamma, m2, res2

    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        _, gamma, m2, res2 = stats(alpha, beta)
        new_alpha = max(gamma / max(m2, _TINY), _TINY)
        new_beta = max((n - gamma) / max(res2, _TINY), _TINY)
        done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
        alpha, beta = new_alpha, new_beta
        if done:
            break
    den, _, m2, res2 = stats(alpha, beta)
    log_det_a = float(np.sum(np.log(den))) + (d - k) * np.log(alpha)
    evidence = (
        0.5 * n * np.log(beta)
        + 0.5 * d * np.log(alpha)
        - 0.5 * n * np.log(2 * np.pi)
        - 0.5 * beta * res2
        - 0.5 * alpha * m2
        - 0.5 * log_det_a
    )
    return float(evidence), float(alpha), float(beta)


def target_evidence(features: Any, target: Any, *, tol: float = 1e-4, max_iter: int = 100):
    """Maximised log evidence (not divided by N) of ``target = F w + noise``.

    Returns ``(log_evidence, alpha, beta)``; the per-target step of :func:`logme`.
    """
    f = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    return _evidence_from_svd(s, u.T @ y, float(y @ y), f.shape[0], f.shape[1], tol, max_iter)


@register_score("logme", "features", "LogME (You et al. 2021): max log evidence of a Bayesian linear model per N")
def logme(features: Any, labels: Any) -> float:
    """LogME of ``features`` [N, D] for class ``labels``; higher is better."""
    f, y, c = check_inputs(features, labels)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    onehot = (y[:, None] == np.arange(c)[None, :]).astype(np.float64)  # [N, C]
    zs = u.T @ onehot  # [k, C]
    per_class = [
        _evidence_from_svd(s, zs[:, j], float(onehot[:, j].sum()), n, d)[0] / n for j in range(c)
    ]
    return float(np.mean(per_class))
