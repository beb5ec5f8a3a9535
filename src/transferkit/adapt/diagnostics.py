"""Label-free diagnostics of a target domain: prediction entropy, SND, proxy A-distance."""

from __future__ import annotations

import numpy as np
import torch


def mean_entropy(probs: np.ndarray) -> float:
    p = np.clip(probs, 1e-12, 1.0)
    return float(-(p * np.log(p)).sum(1).mean())


def snd(probs: np.ndarray, temperature: float = 0.05, max_samples: int = 3000, seed: int = 0) -> float:
    """Soft neighbourhood density (Saito et al., ICCV 2021) of target predictions: the mean entropy of
    each sample's softmax-weighted similarity to the other samples (L2-normalised probabilities,
    temperature 0.05). Higher means denser, better-clustered target predictions."""
    x = torch.from_numpy(np.asarray(probs, dtype=np.float32))
    if len(x) > max_samples:
        x = x[torch.from_numpy(np.random.default_rng(seed).choice(len(x), max_samples, replace=False))]
    if len(x) < 2:
        return float("nan")
    x = torch.nn.functional.normalize(x, dim=1)
    sim = x @ x.T
    sim.fill_diagonal_(float("-inf"))
    q = torch.softmax(sim / temperature, dim=1)
    ent = -(q * torch.log(q.clamp_min(1e-12))).sum(1)
    return float(ent.mean())


def proxy_a_distance(source: np.ndarray, target: np.ndarray, seed: int = 0) -> float:
    """2 (1 - 2 err) of a linear domain classifier on held-out halves of the two feature sets
    (Ben-David et al., 2007): 0 = indistinguishable domains, 2 = perfectly separable."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    n = min(len(source), len(target))
    if n < 4:
        raise ValueError("proxy A-distance needs at least 4 samples per domain")
    s = source[rng.choice(len(source), n, replace=False)]
    t = target[rng.choice(len(target), n, replace=False)]
    x = np.concatenate([s, t]).astype(np.float64)
    y = np.concatenate([np.ones(n), np.zeros(n)])
    xa, xb, ya, yb = train_test_split(x, y, test_size=0.5, stratify=y, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    clf.fit(xa, ya)
    err = min(0.5, float((clf.predict(xb) != yb).mean()))
    return 2.0 * (1.0 - 2.0 * err)
