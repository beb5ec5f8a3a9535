"""The one backbone interface every modality implements.

A backbone gives pooled features for a batch, their dimension, its layer groups ordered from
input to output (for freezing, per-group learning rates and layer selection) and the
preprocessing that belongs to its weights.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class ImagePreprocess:
    """How raw images become the tensors the weights were trained on (from timm's pretrained cfg)."""

    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    @property
    def resize_size(self) -> int:
        """Side of the stored (decoded once) square image; the centre crop is ``input_size``."""
        return int(round(self.input_size / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "image", **asdict(self)}


@dataclass(frozen=True)
class TextPreprocess:
    """Tokeniser settings that travel with a text backbone."""

    max_length: int = 128
    pooling: str = "mean"  # "mean" over non-padding tokens, or "cls"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "text", **asdict(self)}


@dataclass(frozen=True)
class AudioPreprocess:
    """How raw audio becomes the waveform windows the weights take: the weights' sample rate, the
    window length in seconds, and how prediction windows a clip longer than the window (one centre
    window, or ``sliding`` windows every ``hop`` seconds, their features averaged)."""

    sample_rate: int = 16000
    window: float = 1.0
    eval_windows: str = "center"  # "center" | "sliding"
    hop: float = 0.5  # seconds between sliding windows

    @property
    def window_samples(self) -> int:
        return max(1, int(round(self.window * self.sample_rate)))

    @property
    def hop_samples(self) -> int:
        return max(1, int(round(self.hop * self.sample_rate)))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "audio", **asdict(self)}


Preprocess = ImagePreprocess | TextPreprocess | AudioPreprocess
_PREPROCESS = {"image": ImagePreprocess, "text": TextPreprocess, "audio": AudioPreprocess}


def preprocess_from_dict(d: dict[str, Any]) -> Preprocess:
    d = dict(d)
    kind = d.pop("kind")
    cls = _PREPROCESS.get(kind, TextPreprocess)
    known = {f.name for f in fields(cls)}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
    return cls(**kwargs)


class Backbone(nn.Module):
    """Base class: subclasses set ``modality``, ``num_features``, ``preprocess``."""

    modality: ClassVar[str]
    source: ClassVar[str]
    num_features: int
    preprocess: Preprocess
    #: the pretrained source classifier (weight [Z, D], bias [Z]) on the output features, if known
    source_head: tuple[torch.Tensor, torch.Tensor] | None = None

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, batch: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def layer_groups(self) -> list[list[str]]:
        """Parameter names grouped by layer, ordered input -> output. Every parameter is in one group."""
        raise NotImplementedError

    def feature_points(self) -> list[tuple[str, nn.Module | None]]:
        """Where pooled features can be taken, input -> output: the module closing each layer group
        but the last, then ``("output", None)`` (see ``backbones.layers``)."""
        from .layers import points_from_groups

        return points_from_groups(self, self.layer_groups())

    def pool_hidden(self, hidden: Any, batch: Any) -> torch.Tensor:
        """Pool an inner module's output to ``[B, D]``: spatial mean of ``[B, C, H, W]``, token mean
        of ``[B, L, D]``."""
        h = hidden[0] if isinstance(hidden, (tuple, list)) else hidden
        if h.dim() == 4:
            return h.mean(dim=(2, 3))
        if h.dim() == 3:
            return h.mean(dim=1)
        return h.flatten(1)

    # --- persistence: a saved model rebuilds the architecture from this recipe, then loads weights
    def recipe(self) -> dict[str, Any]:
        raise NotImplementedError

    def save_assets(self, folder: Path) -> None:
        """Write files the architecture needs to be rebuilt offline (tokeniser, config)."""

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], folder: Path) -> "Backbone":
        raise NotImplementedError


def group_by_patterns(names: list[str], first: str, index: str) -> list[list[str]]:
    """Group parameter names: ``first`` regex -> group 0, ``index`` regex with one number -> 1 + n,
    everything else -> a final group. Empty groups are dropped; order is input -> output."""
    first_re, index_re = re.compile(first), re.compile(index)
    buckets: dict[int, list[str]] = {}
    last = 10**9
    for n in names:
        if first_re.search(n):
            key = 0
        elif m := index_re.search(n):
            key = 1 + int(m.group(1))
        else:
            key = last
        buckets.setdefault(key, []).append(n)
    return [buckets[k] for k in sorted(buckets)]
