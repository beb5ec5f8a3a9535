"""Task-sized heads on top of pooled backbone features."""

from __future__ import annotations

from typing import Any

from torch import nn


def make_head(spec: dict[str, Any]) -> nn.Module:
    """``spec``: {"kind": "linear"|"mlp", "in": D, "out": C, "dropout": p, "hidden": H}."""
    d_in, d_out, p = int(spec["in"]), int(spec["out"]), float(spec.get("dropout", 0.0))
    if spec["kind"] == "mlp":
        hidden = int(spec.get("hidden", 512))
        return nn.Sequential(nn.Dropout(p), nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(p), nn.Linear(hidden, d_out))
    return nn.Sequential(nn.Dropout(p), nn.Linear(d_in, d_out))


def head_spec(kind: str, d_in: int, d_out: int, dropout: float) -> dict[str, Any]:
    return {"kind": "mlp" if kind == "mlp" else "linear", "in": d_in, "out": d_out, "dropout": dropout, "hidden": 512}
