"""Episodic few-shot evaluation as the field reports it.

``evaluate_episodes`` samples N-way K-shot episodes with a fixed seed and reports the mean accuracy
with a 95% confidence interval (1.96 standard errors over episodes). Queries may come from a second,
row-aligned feature set (the same items in another domain): a query is never one of its episode's
support items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import SEED_MAX, check_int
from ..errors import ConfigError, DataError

MAX_EPISODES = 1_000_000  # each episode's accuracy is kept (8 bytes)
MAX_WAYS = 100_000
from .prototypes import METRICS, classify, resolve_backbone


@dataclass
class EpisodeResult:
    n_way: int
    k_shot: int
    n_query: int
    accuracies: np.ndarray  # one per episode

    @property
    def mean(self) -> float:
        return float(self.accuracies.mean())

    @property
    def ci95(self) -> float:
        n = len(self.accuracies)
        return float(1.96 * self.accuracies.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")

    def to_dict(self) -> dict:
        return {"n_way": self.n_way, "k_shot": self.k_shot, "n_query": self.n_query, "episodes": len(self.accuracies),
                "accuracy": self.mean, "ci95": self.ci95}


class EpisodeSampler:
    """Draws N-way K-shot episodes: ``n_way`` classes among those with at least ``k_shot + n_query``
    items, then ``k_shot`` support and ``n_query`` query items per class, disjoint. Episode labels
    are 0..n_way-1 in the order the classes were drawn; indices are grouped by class."""

    def __init__(self, labels, n_way: int, k_shot: int, n_query: int, seed: int = 0):
        labels = np.asarray(labels)
        if n_way < 2 or k_shot < 1 or n_query < 1:
            raise ConfigError(f"Invalid episode shape {n_way}-way {k_shot}-shot, {n_query} queries.",
                              "use --ways >= 2 and --shots, --queries >= 1.")
        self.by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
        self.eligible = sorted(c for c, idx in self.by_class.items() if len(idx) >= k_shot + n_query)
        if len(self.eligible) < n_way:
            raise DataError(f"Only {len(self.eligible)} classes have at least {k_shot + n_query} examples; {n_way}-way episodes need {n_way}.",
                            "lower --ways, --shots or --queries, or add examples.")
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.rng = np.random.default_rng(seed)
        self.support_labels = torch.arange(n_way).repeat_interleave(k_shot)
        self.query_labels = torch.arange(n_way).repeat_interleave(n_query)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """``(support_idx, query_idx)`` into the labelled rows."""
        s_idx, q_idx = [], []
        for c in self.rng.choice(self.eligible, self.n_way, replace=False):
            pick = self.rng.choice(self.by_class[c], self.k_shot + self.n_query, replace=False)
            s_idx.append(pick[: self.k_shot])
            q_idx.append(pick[self.k_shot :])
        return np.concatenate(s_idx), np.concatenate(q_idx)


def evaluate_episodes(
    features: torch.Tensor,
    labels: np.ndarray,
    *,
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 15,
    episodes: int = 600,
    seed: int = 0,
    metric: str = "cosine",
    centre: bool = True,
    query_features: torch.Tensor | None = None,
) -> EpisodeResult:
    """Mean accuracy over ``episodes`` N-way K-shot episodes drawn with ``seed``.

    Each episode draws ``n_way`` classes among those with at least ``k_shot + n_query`` items, then
    ``k_shot`` support and ``n_query`` query items per class, disjoint. Queries are read from
    ``query_features`` (row-aligned with ``features``: the same items in another domain) if given.
    """
    if query_features is not None and len(query_features) != len(features):
        raise DataError(f"Query features have {len(query_features)} rows, support features {len(features)}.",
                        "queries from another domain must list the same items in the same order.")
    sampler = EpisodeSampler(labels, n_way, k_shot, n_query, seed)
    if episodes < 1:
        raise ConfigError(f"--episodes {episodes} is below 1.", "use --episodes 600 (the field's usual count) or more.")
    queries = features if query_features is None else query_features
    accs = np.empty(episodes)
    for e in range(episodes):
        s_idx, q_idx = sampler.sample()
        pred = classify(features[s_idx], sampler.support_labels, queries[q_idx], n_way, metric, centre)
        accs[e] = float((pred == sampler.query_labels).float().mean())
    return EpisodeResult(n_way, k_shot, n_query, accs)


def check_episode_options(ways: int, shots, queries: int, episodes: int, seed: int, max_episodes: int = MAX_EPISODES) -> None:
    """Episode options in range (``shots``: one number or several)."""
    check_int(ways, "--ways", 2, MAX_WAYS)
    for k in (shots if isinstance(shots, (tuple, list)) else [shots]):
        check_int(k, "--shots", 1, MAX_WAYS)
    if isinstance(shots, (tuple, list)) and not shots:
        raise ConfigError("--shots lists no number.", "pass e.g. --shots 1,5.")
    check_int(queries, "--queries", 1, MAX_WAYS)
    check_int(episodes, "--episodes", 1, max_episodes)
    check_int(seed, "--seed", 0, SEED_MAX)


def fewshot_eval(
    data,
    *,
    backbone="efficientnet_lite0",
    query_data=None,
    ways: int = 5,
    shots: tuple[int, ...] = (1, 5),
    queries: int = 15,
    episodes: int = 600,
    seed: int = 0,
    metric: str = "cosine",
    image_size: int | None = None,
    backbone_weights: str | None = None,
    device: str = "auto",
    loader: dict | None = None,
    progress: bool = False,
) -> list[EpisodeResult]:
    """Episodic few-shot accuracy of a frozen backbone's prototypes on labelled ``data`` (features
    cached). ``backbone``: a name, a saved model folder (e.g. from ``meta_train``) or a model. ``query_data``: the same items in another domain (same rows, same labels) to draw the
    queries from."""
    from ..data.dataset import TaskData, load_data
    from ..features import extract_features

    if metric not in METRICS:
        raise ConfigError(f"Unknown metric {metric!r}.", f"use one of: {', '.join(METRICS)}.")
    check_episode_options(ways, shots, queries, episodes, seed)  # before any work
    loader = dict(loader or {})
    d = data if isinstance(data, TaskData) else load_data(data, **loader)
    q = None
    if query_data is not None:
        q = query_data if isinstance(query_data, TaskData) else load_data(query_data, label_names=d.label_names, **loader)
        if len(q) != len(d) or not np.array_equal(np.asarray(q.targets), np.asarray(d.targets)):
            raise DataError(f"--query-data has {len(q)} rows whose labels differ from DATA's ({len(d)} rows).",
                            "list the same items, in the same order, in both sets (e.g. one manifest per domain).")
    bb = resolve_backbone(backbone, image_size=image_size, weights=backbone_weights)
    feats = extract_features(bb, d, device=device, progress=progress)
    q_feats = extract_features(bb, q, device=device, progress=progress) if q is not None else None
    return [evaluate_episodes(feats, d.targets, n_way=ways, k_shot=k, n_query=queries, episodes=episodes, seed=seed,
                              metric=metric, query_features=q_feats) for k in shots]
