"""Few-shot classification with class prototypes, and episodic evaluation as the field reports it.

Prototypes (Snell et al., 2017) of frozen features with SimpleShot's feature transform (Wang et
al., 2019): centre the features (on the support set's mean) and L2-normalise them, then classify a
query by its nearest prototype (cosine, or squared Euclidean). No training is needed, and any
backbone works: features come from the core's cache.

``evaluate_episodes`` samples N-way K-shot episodes with a fixed seed and reports the mean accuracy
with a 95% confidence interval (1.96 standard errors over episodes). Queries may come from a second,
row-aligned feature set (the same items in another domain): a query is never one of its episode's
support items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import ConfigError, DataError

METRICS = ("cosine", "euclidean")


def transform(features: torch.Tensor, centre: torch.Tensor | None) -> torch.Tensor:
    """SimpleShot's CL2N: subtract ``centre`` (if given), then L2-normalise each row."""
    x = features.float()
    if centre is not None:
        x = x - centre
    return torch.nn.functional.normalize(x, dim=-1)


def prototypes(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Mean feature of each class ``[n_classes, D]``; every class needs at least one example."""
    counts = torch.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise DataError(f"No support example for class index {missing[0]}.", "give every class at least one support example.")
    sums = torch.zeros(n_classes, features.shape[1], dtype=features.dtype).index_add_(0, labels, features)
    return sums / counts.unsqueeze(1).to(features.dtype)


def scores(query: torch.Tensor, protos: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """Higher = closer: cosine similarity of normalised vectors, or minus the squared distance."""
    if metric == "cosine":
        return torch.nn.functional.normalize(query, dim=-1) @ torch.nn.functional.normalize(protos, dim=-1).T
    if metric == "euclidean":
        return -torch.cdist(query, protos).pow(2)
    raise ConfigError(f"Unknown metric {metric!r}.", f"use one of: {', '.join(METRICS)}.")


def classify(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_classes: int,
             metric: str = "cosine", centre: bool = True) -> torch.Tensor:
    """Predicted class index of each query row from a labelled support set."""
    mean = support.float().mean(0) if centre else None
    s, q = transform(support, mean), transform(query, mean)
    return scores(q, prototypes(s, support_labels, n_classes), metric).argmax(1)


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
    labels = np.asarray(labels)
    if n_way < 2 or k_shot < 1 or n_query < 1 or episodes < 1:
        raise ConfigError(f"Invalid episode shape {n_way}-way {k_shot}-shot, {n_query} queries, {episodes} episodes.",
                          "use --ways >= 2 and --shots, --queries, --episodes >= 1.")
    if query_features is not None and len(query_features) != len(features):
        raise DataError(f"Query features have {len(query_features)} rows, support features {len(features)}.",
                        "queries from another domain must list the same items in the same order.")
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    eligible = sorted(c for c, idx in by_class.items() if len(idx) >= k_shot + n_query)
    if len(eligible) < n_way:
        raise DataError(f"Only {len(eligible)} classes have at least {k_shot + n_query} examples; {n_way}-way episodes need {n_way}.",
                        "lower --ways, --shots or --queries, or add examples.")
    rng = np.random.default_rng(seed)
    queries = features if query_features is None else query_features
    accs = np.empty(episodes)
    for e in range(episodes):
        classes = rng.choice(eligible, n_way, replace=False)
        s_idx, q_idx = [], []
        for c in classes:
            pick = rng.choice(by_class[c], k_shot + n_query, replace=False)
            s_idx.append(pick[:k_shot])
            q_idx.append(pick[k_shot:])
        s_y = torch.arange(n_way).repeat_interleave(k_shot)
        q_y = torch.arange(n_way).repeat_interleave(n_query)
        pred = classify(features[np.concatenate(s_idx)], s_y, queries[np.concatenate(q_idx)], n_way, metric, centre)
        accs[e] = float((pred == q_y).float().mean())
    return EpisodeResult(n_way, k_shot, n_query, accs)


def fewshot_eval(
    data,
    *,
    backbone: str = "efficientnet_lite0",
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
    cached). ``query_data``: the same items in another domain (same rows, same labels) to draw the
    queries from."""
    from .backbones import create_backbone
    from .data.dataset import TaskData, load_data
    from .features import extract_features

    if metric not in METRICS:
        raise ConfigError(f"Unknown metric {metric!r}.", f"use one of: {', '.join(METRICS)}.")
    loader = dict(loader or {})
    d = data if isinstance(data, TaskData) else load_data(data, **loader)
    q = None
    if query_data is not None:
        q = query_data if isinstance(query_data, TaskData) else load_data(query_data, label_names=d.label_names, **loader)
        if len(q) != len(d) or not np.array_equal(np.asarray(q.targets), np.asarray(d.targets)):
            raise DataError(f"--query-data has {len(q)} rows whose labels differ from DATA's ({len(d)} rows).",
                            "list the same items, in the same order, in both sets (e.g. one manifest per domain).")
    bb = create_backbone(backbone, pretrained=True, weights=backbone_weights, image_size=image_size)
    feats = extract_features(bb, d, device=device, progress=progress)
    q_feats = extract_features(bb, q, device=device, progress=progress) if q is not None else None
    return [evaluate_episodes(feats, d.targets, n_way=ways, k_shot=k, n_query=queries, episodes=episodes, seed=seed,
                              metric=metric, query_features=q_feats) for k in shots]
