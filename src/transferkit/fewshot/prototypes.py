"""Few-shot classification with class prototypes.

Prototypes (Snell et al., 2017) of frozen features with SimpleShot's feature transform (Wang et
al., 2019): centre the features (on the support set's mean) and L2-normalise them, then classify a
query by its nearest prototype (cosine, or squared Euclidean). No training is needed, and any
backbone works: features come from the core's cache.

``prototype_model`` turns a labelled support set into a ``TransferModel`` whose head holds the
prototypes: it predicts, saves and loads like any other model, and ``model.add_support(data)`` adds
examples or whole classes later without retraining.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError

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


def resolve_backbone(backbone: Any = "efficientnet_lite0", *, image_size: int | None = None, weights: str | None = None):
    """A ``Backbone`` from a name, a saved model folder (its backbone, e.g. a meta-trained one), a
    ``TransferModel`` or a ``Backbone``."""
    from ..backbones import Backbone, create_backbone
    from ..model import TransferModel

    if isinstance(backbone, TransferModel):
        return backbone.backbone
    if isinstance(backbone, Backbone):
        return backbone
    path = Path(str(backbone))
    if (path / "model.safetensors").is_file() and _is_model_dir(path):
        return TransferModel.load(path).backbone
    return create_backbone(str(backbone), pretrained=True, weights=weights, image_size=image_size)


def _is_model_dir(path: Path) -> bool:
    import json

    try:
        return "format_version" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False


def check_support(data, source: str | None = None) -> None:
    """Every class of the support set needs at least one example (an empty class subfolder counts)."""
    counts = np.bincount(np.asarray(data.targets), minlength=len(data.label_names))
    names = list(data.label_names)
    if source and Path(source).is_dir():
        names += sorted(p.name for p in Path(source).iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in names)
        counts = np.concatenate([counts, np.zeros(len(names) - len(counts), dtype=int)])
    empty = [n for n, c in zip(names, counts) if c == 0]
    if empty:
        where = f" in {source}" if source else ""
        raise DataError(f"Class {empty[0]!r}{where} has no support examples.", "give every class at least one example, or remove the class.")


def prototype_model(
    support,
    *,
    backbone: Any = "efficientnet_lite0",
    metric: str = "cosine",
    centre: bool = True,
    scale: float = 10.0,
    image_size: int | None = None,
    backbone_weights: str | None = None,
    device: str = "auto",
    loader: dict | None = None,
    progress: bool = False,
):
    """A ``TransferModel`` that classifies into the support set's classes by nearest prototype.

    ``support``: labelled data (class folders, a manifest, or ``TaskData``), at least one example
    per class. ``backbone``: a name, a saved model folder (its backbone is reused, e.g. one from
    ``meta_train``), a ``TransferModel`` or a ``Backbone``. ``centre``: subtract the support mean
    before normalising (SimpleShot); it is kept fixed when examples are added later. ``scale``
    turns cosine scores into logits for the reported probabilities.
    """
    from ..data.dataset import TaskData, load_data
    from ..features import extract_features
    from ..heads import make_head, prototype_spec
    from ..model import TransferModel

    if metric not in METRICS:
        raise ConfigError(f"Unknown metric {metric!r}.", f"use one of: {', '.join(METRICS)}.")
    data = support if isinstance(support, TaskData) else load_data(support, min_classes=1, **(loader or {}))
    if data.task != "classification":
        raise DataError(f"Support set {data.source} is a {data.task} task.", "few-shot prototypes need single-label classes.")
    check_support(data, data.source)
    bb = resolve_backbone(backbone, image_size=image_size, weights=backbone_weights)
    if bb.modality != data.modality:
        raise DataError(f"Support set {data.source} holds {data.modality} inputs but the backbone {bb.name} takes {bb.modality}.",
                        "pick a backbone of the support set's modality.")
    feats = extract_features(bb, data, device=device, progress=progress)
    spec = prototype_spec(bb.num_features, len(data.label_names), metric)
    head = make_head(spec)
    if centre:
        head.centre.copy_(feats.mean(0))
    head.scale.fill_(float(scale))
    head.add_examples(feats, torch.as_tensor(np.asarray(data.targets), dtype=torch.long))
    info = {"support": {"source": str(data.source), "examples": len(data), "classes": len(data.label_names)}, "centre": centre}
    return TransferModel(bb, head, head_spec=spec, task="classification", label_names=list(data.label_names), strategy="prototypes", info=info).eval()


def predict(inputs, support, *, backbone: Any = "efficientnet_lite0", top_k: int | None = None, device: str = "auto", **kwargs):
    """Classify ``inputs`` (image paths or texts) into the classes of ``support`` by nearest
    prototype: the one-call few-shot API. ``kwargs`` go to ``prototype_model``."""
    return prototype_model(support, backbone=backbone, device=device, **kwargs).predict(inputs, top_k=top_k, device=device)
