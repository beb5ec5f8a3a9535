"""Rank candidate backbones (and the layers inside them) for a labelled task, before any fine-tuning.

Each candidate's frozen features are extracted once (cached, like every other feature in
transferkit) and scored by every registered transferability score. No single score wins on every
task, so candidates are ordered by their mean rank over the scores that all candidates have. Each
pretrained candidate is compared with the same architecture randomly initialised: when the scores
do not clearly prefer the pretrained weights, a negative-transfer warning says so.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbones import create_backbone
from ..config import SEED_MAX, check_image_size, check_int
from ..backbones.layers import OUTPUT, check_points, point_names
from ..data.dataset import TaskData
from ..errors import ConfigError, DataError
from ..features import extract_layer_features
from .base import SCORES, compute_scores

#: below this many labelled examples in the median class, fine-tuning a whole backbone tends to
#: overfit and a linear probe on frozen features is the safer start (a rule of thumb, see README)
FEW_PER_CLASS = 10


@dataclass
class RankRow:
    backbone: str
    layer: str
    pretrained: bool
    dim: int
    scores: dict[str, float]
    seconds: float  # features (shared evenly by a backbone's layers) + scores
    mean_rank: float | None = None
    score_seconds: float = 0.0

    @property
    def label(self) -> str:
        name = self.backbone if self.layer == OUTPUT else f"{self.backbone} @ {self.layer}"
        return name if self.pretrained else f"{name} (random init)"


@dataclass
class RankReport:
    rows: list[RankRow]  # best first
    aggregate_over: list[str]  # the scores averaged into ``mean_rank``
    warnings: list[str]
    recommendation: dict[str, Any]
    n_samples: int
    n_scored: int
    n_classes: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for row, r in zip(d["rows"], self.rows):
            row["label"] = r.label
        return d

    def save(self, path: str | Path) -> Path:
        from .._io import atomic_write_json

        return atomic_write_json(Path(path), self.to_dict())


def stratified_subset(data: TaskData, max_samples: int | None, seed: int) -> TaskData:
    """At most ``max_samples`` rows, every class kept in proportion (and at least 2 per class where it has 2)."""
    if max_samples is None or len(data) <= max_samples:
        return data
    rng = np.random.default_rng(seed)
    y = np.asarray(data.targets)
    keep: list[int] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(min(2, len(idx)), int(round(len(idx) * max_samples / len(data))))
        keep.extend(rng.choice(idx, size=k, replace=False).tolist())
    return data.subset(sorted(keep))


def _source_probs(head, features: torch.Tensor) -> torch.Tensor:
    w, b = head
    return torch.softmax(features.double() @ w.double().T + b.double(), dim=1)


def aggregate(rows: list[RankRow], names: list[str] | None = None) -> list[str]:
    """Set each row's ``mean_rank`` (1 = best) over the scores every row has; returns those names."""
    from scipy.stats import rankdata

    common = [n for n in (names or SCORES.names()) if all(n in r.scores for r in rows)]
    if not common:
        return []
    ranks = np.stack([rankdata([-r.scores[n] for r in rows], method="average") for n in common])
    for row, value in zip(rows, ranks.mean(axis=0)):
        row.mean_rank = float(value)
    return common


def negative_transfer_warnings(rows: list[RankRow], names: list[str]) -> list[str]:
    """One warning per pretrained candidate that does not beat its random-init twin on most scores."""
    twins = {(r.backbone, r.layer): r for r in rows if not r.pretrained}
    out = []
    for r in rows:
        twin = twins.get((r.backbone, r.layer))
        if not r.pretrained or twin is None or not names:
            continue
        wins = [n for n in names if r.scores[n] > twin.scores[n]]
        if 2 * len(wins) <= len(names):
            out.append(
                f"negative transfer likely: {r.label} beats its random initialisation on {len(wins)} of {len(names)} "
                f"scores ({', '.join(wins) or 'none'}); check with 'transferkit compare' before relying on it."
            )
    return out


def recommend(rows: list[RankRow], per_class: float, data_hint: str = "DATA") -> dict[str, Any]:
    """Backbone, layer and strategy for the best candidate, with the reason in words."""
    best = rows[0]
    if not best.pretrained:
        strategy, reason = "scratch", (
            f"the randomly initialised {best.backbone} ranks above every pretrained candidate: no pretrained "
            "backbone here is predicted to help"
        )
    else:
        if best.layer != OUTPUT:
            strategy, reason = "finetune", (
                f"an inner layer ({best.layer}) ranks above the backbone's output: cut there and fine-tune the layers below it"
            )
        elif per_class < FEW_PER_CLASS:
            strategy, reason = "linear-probe", (
                f"{per_class:.0f} labelled examples in the median class (< {FEW_PER_CLASS}): fine-tuning would likely overfit"
            )
        else:
            strategy, reason = "finetune", (
                f"{per_class:.0f} labelled examples in the median class (>= {FEW_PER_CLASS}): enough to fine-tune"
            )
    command = f"transferkit fit {data_hint} --backbone {best.backbone} --strategy {strategy}"
    if best.layer != OUTPUT:
        command += f" --layer {best.layer}"
    return {"backbone": best.backbone, "layer": best.layer, "strategy": strategy, "reason": reason, "command": command}


def _layers_for(backbone, layers: str | list[str] | None) -> list[str]:
    if layers is None:
        return [OUTPUT]
    if layers == "all":
        return point_names(backbone)
    names = [layers] if isinstance(layers, str) else list(layers)
    return check_points(backbone, names)


def score_backbone(
    name: str,
    data: TaskData,
    layers: str | list[str] | None = None,
    *,
    pretrained: bool = True,
    scores: list[str] | None = None,
    seed: int = 0,
    image_size: int | None = None,
    batch_size: int = 128,
    device: str = "auto",
    cache: bool = True,
    progress: bool = False,
    audio_window: float | None = None,
) -> list[RankRow]:
    """One row per layer of one backbone (pretrained, or randomly initialised with ``seed``): every
    score on its frozen features, and the seconds it took (features shared evenly by the layers)."""
    torch.manual_seed(seed)  # the random-init control is the same network on every run
    t0 = time.perf_counter()
    bb = create_backbone(name, pretrained=pretrained, image_size=image_size, window=audio_window)
    if bb.modality != data.modality:
        raise DataError(f"Backbone {name!r} takes {bb.modality} inputs but the data holds {data.modality}s.",
                        "rank image backbones on images and text backbones on texts.")
    points = _layers_for(bb, layers)
    feats = extract_layer_features(bb, data, points, batch_size=batch_size, device=device, cache=cache, progress=progress)
    shared = (time.perf_counter() - t0) / len(points)
    rows = []
    for layer in points:
        t1 = time.perf_counter()
        probs = _source_probs(bb.source_head, feats[layer]) if (layer == OUTPUT and bb.source_head) else None
        values = compute_scores(feats[layer], data.targets, source_probs=probs, names=scores, seed=seed)
        took = time.perf_counter() - t1
        rows.append(RankRow(name, layer, pretrained, int(feats[layer].shape[1]), values, shared + took, score_seconds=took))
    return rows


def rank(
    data: TaskData | str | Path,
    backbones: list[str] | str,
    *,
    layers: str | list[str] | None = None,
    scratch: bool = True,
    scores: list[str] | None = None,
    max_samples: int | None = 5000,
    seed: int = 0,
    image_size: int | None = None,
    batch_size: int = 128,
    device: str = "auto",
    cache: bool = True,
    progress: bool = True,
    loader: dict[str, Any] | None = None,
    audio_window: float | None = None,
) -> RankReport:
    """Score every (backbone, layer) candidate on ``data`` and order them best first.

    ``layers``: None (each backbone's output), ``"all"`` (every feature point: where to cut, how
    much to freeze) or a list of point names. ``scratch`` adds each backbone randomly initialised
    (seeded) as a negative control and warns where a pretrained one is predicted no better.
    ``max_samples`` caps the rows scored (stratified; the kNN score is quadratic in them).
    """
    from ..api import _as_data

    if max_samples is not None:
        check_int(max_samples, "--max-samples", 0)
        max_samples = max_samples or None  # 0: all
    check_int(batch_size, "--batch-size", 1)
    check_int(seed, "--seed", 0, SEED_MAX)
    check_image_size(image_size)
    start = time.perf_counter()
    names = [b.strip() for b in ([backbones] if isinstance(backbones, str) else backbones) if b.strip()]
    if not names:
        raise ConfigError("No backbone to rank.", "pass --backbones a,b,c (e.g. efficientnet_lite0,efficientnet_lite1).")
    if scores is not None:
        for s in scores:
            SCORES.get(s)  # unknown names fail before any work
    full = _as_data(data, loader or {})
    if full.task != "classification":
        raise DataError(f"Ranking needs class labels; {full.source or 'the data'} is a {full.task} task.",
                        "rank with a classification label column (--label-column).")
    sub = stratified_subset(full, max_samples, seed)
    counts = np.bincount(np.asarray(full.targets), minlength=len(full.label_names))
    rows: list[RankRow] = []
    for name in names:
        for pretrained in (True, False) if scratch else (True,):
            rows += score_backbone(name, sub, layers, pretrained=pretrained, scores=scores, seed=seed, image_size=image_size,
                                   batch_size=batch_size, device=device, cache=cache, progress=progress, audio_window=audio_window)
    over = aggregate(rows, scores)
    rows.sort(key=lambda r: (r.mean_rank if r.mean_rank is not None else np.inf, -r.scores.get("linear_cv", 0.0)))
    return RankReport(
        rows=rows,
        aggregate_over=over,
        warnings=negative_transfer_warnings(rows, over),
        recommendation=recommend(rows, float(np.median(counts[counts > 0])), str(full.source or "DATA")),
        n_samples=len(full),
        n_scored=len(sub),
        n_classes=len(full.label_names),
        seconds=time.perf_counter() - start,
    )
