"""Task-sized heads on top of pooled backbone features.

``linear``/``mlp`` are trained heads. ``prototype`` is a nearest-class-vector head: few-shot
prototypes (class means of support embeddings) or zero-shot class vectors (label-name
embeddings, attribute rows), optionally behind a learned projection into that space.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class PrototypeHead(nn.Module):
    """Scores ``scale * cos(embed(x), v_c) + bias_c`` (or ``-scale * ||embed(x) - v_c||^2 + bias_c``).

    ``embed(x)`` = L2-normalised ``project(x - centre)`` (SimpleShot's CL2N when ``centre`` is the
    support mean; ``project`` is the identity unless a semantic mapping was learned). Class vectors
    are kept as ``sums / counts`` of embedded examples, so adding examples or classes later is an
    update, not retraining. ``bias`` holds the calibration term of generalised zero-shot (a
    negative value on seen classes).
    """

    def __init__(self, d_in: int, n_classes: int, dim: int | None = None, metric: str = "cosine", project: bool = False):
        super().__init__()
        dim = int(dim or d_in)
        if metric not in ("cosine", "euclidean"):
            raise ValueError(f"unknown metric {metric!r}")
        self.metric = metric
        self.project = nn.Linear(d_in, dim, bias=False) if project else None
        self.register_buffer("centre", torch.zeros(d_in))
        self.register_buffer("sums", torch.zeros(n_classes, dim))
        self.register_buffer("counts", torch.zeros(n_classes))
        self.register_buffer("bias", torch.zeros(n_classes))
        self.register_buffer("scale", torch.tensor(10.0))

    @property
    def n_classes(self) -> int:
        return int(self.sums.shape[0])

    @property
    def prototypes(self) -> torch.Tensor:
        return self.sums / self.counts.clamp_min(1).unsqueeze(1)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        x = features.float() - self.centre
        if self.project is not None:
            x = self.project(x)
        return nn.functional.normalize(x, dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        q, p = self.embed(features), self.prototypes
        if self.metric == "cosine":
            s = q @ nn.functional.normalize(p, dim=-1).T
        else:
            s = -torch.cdist(q, p).pow(2)
        return self.scale * s + self.bias

    @torch.no_grad()
    def add_vectors(self, vectors: torch.Tensor, labels: torch.Tensor) -> None:
        """Add already-embedded rows to classes ``labels`` (indices >= n_classes add classes)."""
        n = max(self.n_classes, int(labels.max()) + 1) if len(labels) else self.n_classes
        if n > self.n_classes:
            grow = n - self.n_classes
            self.sums = torch.cat([self.sums, self.sums.new_zeros(grow, self.sums.shape[1])])
            self.counts = torch.cat([self.counts, self.counts.new_zeros(grow)])
            self.bias = torch.cat([self.bias, self.bias.new_zeros(grow)])
        labels = labels.to(self.sums.device)
        self.sums.index_add_(0, labels, vectors.to(self.sums))
        self.counts.index_add_(0, labels, torch.ones(len(labels), device=self.counts.device))

    def add_examples(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Embed backbone features and add them as examples of ``labels``."""
        with torch.no_grad():
            self.add_vectors(self.embed(features.to(self.centre.device)), labels)


def make_head(spec: dict[str, Any]) -> nn.Module:
    """``spec``: {"kind": "linear"|"mlp"|"prototype", "in": D, "out": C, "dropout": p, "hidden": H}
    (prototype: also "dim", "metric", "project")."""
    d_in, d_out, p = int(spec["in"]), int(spec["out"]), float(spec.get("dropout", 0.0))
    if spec["kind"] == "multitask":
        from .multitask import MultiTaskHead

        return MultiTaskHead(spec)
    if spec["kind"] == "prototype":
        return PrototypeHead(d_in, d_out, spec.get("dim"), spec.get("metric", "cosine"), bool(spec.get("project", False)))
    if spec["kind"] == "stack":  # per-member probes + meta-learner (strategies/stack.py)
        from .strategies.stack import StackHead

        return StackHead([int(d) for d in spec["dims"]], d_out)
    if spec["kind"] == "mlp":
        hidden = int(spec.get("hidden", 512))
        return nn.Sequential(nn.Dropout(p), nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(p), nn.Linear(hidden, d_out))
    return nn.Sequential(nn.Dropout(p), nn.Linear(d_in, d_out))


def head_spec(kind: str, d_in: int, d_out: int, dropout: float) -> dict[str, Any]:
    return {"kind": "mlp" if kind == "mlp" else "linear", "in": d_in, "out": d_out, "dropout": dropout, "hidden": 512}


def prototype_spec(d_in: int, n_classes: int, metric: str = "cosine", dim: int | None = None, project: bool = False) -> dict[str, Any]:
    return {"kind": "prototype", "in": d_in, "out": n_classes, "dim": int(dim or d_in), "metric": metric, "project": project}
