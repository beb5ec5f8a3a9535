"""H-score and its shrinkage-regularised version.

Bao, Li, Huang, Zheng, Wang, Tong, "An Information-Theoretic Approach to
Transferability in Task Transfer Learning", ICIP 2019:
``H(f) = tr(pinv(Cov(f)) Cov(E[f | y]))`` with centred features f.

Ibrahim, Ponomareva, Mazumder, "Newer is not always better: Rethinking
transferability metrics, their peculiarities, stability and performance",
ICLR 2022: the "regularised H-score" replaces Cov(f) by the Ledoit-Wolf shrunk
``(1 - a) Cov(f) + a * mean(diag Cov(f)) I`` and, as in that paper, scales
Cov(E[f | y]) by ``(1 - a)``. With ``a = 0`` both are the plain H-score.

The plain H-score is unstable in high dimension: when D approaches N the
sample covariance is (near-)singular, the pseudo-inverse amplifies noise
directions and the score tends to its maximum C - 1 for any features.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from .base import check_inputs, register_score


def hscore(features: Any, labels: Any, shrinkage: float | str | None = "auto") -> float:
    """H-score of ``features`` [N, D] for ``labels``; higher is better (at most C - 1).

    ``shrinkage``: None or 0 -> plain formula with a pseudo-inverse; "auto" ->
    Ledoit-Wolf coefficient (sklearn.covariance.ledoit_wolf_shrinkage); a float in
    [0, 1] -> that coefficient.
    """
    f, y, c = check_inputs(features, labels)
    n, d = f.shape
    f = f - f.mean(axis=0)
    if shrinkage is None:
        a = 0.0
    elif isinstance(shrinkage, str):
        if shrinkage != "auto":
            raise ConfigError(f"Unknown H-score shrinkage {shrinkage!r}.", 'use "auto", None or a float in [0, 1].')
        from sklearn.covariance import ledoit_wolf_shrinkage

        a = float(ledoit_wolf_shrinkage(f, assume_centered=True))
    else:
        a = float(shrinkage)
        if not 0.0 <= a <= 1.0:
            raise ConfigError(f"H-score shrinkage must be in [0, 1], got {a}.", 'use "auto", None or a float in [0, 1].')
    cov_f = f.T @ f / n
    counts = np.bincount(y, minlength=c).astype(np.float64)
    means = np.zeros((c, d))
    np.add.at(means, y, f)
    means /= counts[:, None]
    cov_g = (means.T * (counts / n)) @ means  # Cov(E[f|y]) = sum_c p_c mu_c mu_c^T
    if a > 0.0:
        cov_f = (1.0 - a) * cov_f + a * np.mean(np.diag(cov_f)) * np.eye(d)
        cov_g = (1.0 - a) * cov_g
    return float(np.trace(np.linalg.pinv(cov_f, hermitian=True) @ cov_g))


@register_score("hscore", "features", "regularised H-score (Bao et al. 2019; Ledoit-Wolf shrinkage, Ibrahim et al. 2022)")
def _hscore_auto(features: Any, labels: Any) -> float:
    return hscore(features, labels, shrinkage="auto")
