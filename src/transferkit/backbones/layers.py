"""Features from inside a backbone: a pooled vector after each layer group, and a backbone cut there.

A *feature point* closes one layer group (``blocks.3`` of an EfficientNet, ``model.encoder.layer.2``
of a BERT); the last point, ``output``, is the backbone's own pooled features. One forward pass
with hooks gives every point at once, and stops early once the deepest requested point is reached.
``CutBackbone`` turns a point into a backbone of its own, so a model can be trained on the layer
that the transferability scores pick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import Backbone

OUTPUT = "output"


class _Reached(Exception):
    """Raised by a hook to end the forward pass once every requested point has its features."""


def group_module(group: list[str], modules: dict[str, nn.Module]) -> str:
    """The module that closes a layer group: the deepest module holding all of its parameters, or,
    when that is the whole model (a stem made of loose layers), the module of its last parameter."""
    owners = [n.rsplit(".", 1)[0] if "." in n else "" for n in group]
    parts = owners[0].split(".")
    for owner in owners[1:]:
        other = owner.split(".")
        k = 0
        while k < min(len(parts), len(other)) and parts[k] == other[k]:
            k += 1
        parts = parts[:k]
    common = ".".join(parts)
    if common in modules and common not in ("", "model") and list(modules[common].parameters()):
        return common
    return owners[-1]


def points_from_groups(backbone: Backbone, groups: list[list[str]]) -> list[tuple[str, nn.Module | None]]:
    modules = dict(backbone.named_modules())
    points: list[tuple[str, nn.Module | None]] = []
    for group in groups[:-1]:
        name = group_module(group, modules)
        label = name[len("model.") :] if name.startswith("model.") else name
        points.append((label, modules[name]))
    points.append((OUTPUT, None))
    return points


def point_names(backbone: Backbone) -> list[str]:
    return [n for n, _ in backbone.feature_points()]


def check_points(backbone: Backbone, names: list[str]) -> list[str]:
    known = point_names(backbone)
    bad = [n for n in names if n not in known]
    if bad:
        raise ConfigError(f"Unknown layer {bad[0]!r} for {backbone.name}.", f"use one of: {', '.join(known)}.")
    return [n for n in known if n in names]  # input -> output order


def pooled_layers(backbone: Backbone, batch: Any, names: list[str]) -> dict[str, torch.Tensor]:
    """Pooled features ``[B, D_layer]`` at each named point, from one (early-stopped) forward pass."""
    points = dict(backbone.feature_points())
    hooked = [n for n in names if n != OUTPUT]
    out: dict[str, torch.Tensor] = {}
    token = object()  # this call's own stop signal (a CutBackbone runs this inside another call)

    def hook_for(name: str):
        def hook(_module, _args, output):
            out[name] = backbone.pool_hidden(output, batch)
            if OUTPUT not in names and all(n in out for n in hooked):
                raise _Reached(token)

        return hook

    handles = [points[n].register_forward_hook(hook_for(n)) for n in hooked]
    try:
        final = backbone(batch)
        out[OUTPUT] = final
    except _Reached as stop:
        if stop.args[0] is not token:
            raise
    finally:
        for h in handles:
            h.remove()
    return {n: out[n] for n in names}


def dummy_batch(backbone: Backbone) -> Any:
    from ..modalities import handler

    if (h := handler(backbone.modality)) is not None:
        return h.dummy_batch(backbone)
    if backbone.modality == "text":
        return backbone.tokenize(["a"])
    size = backbone.preprocess.input_size
    return torch.zeros(1, 3, size, size)


class CutBackbone(Backbone):
    """A backbone whose features are those pooled after one layer group; the layers above it stay in
    the state dict (so weights load unchanged) but receive no gradient."""

    source = "cut"

    def __init__(self, inner: Backbone, layer: str):
        super().__init__(f"{inner.name}@{layer}")
        check_points(inner, [layer])
        if layer == OUTPUT:
            raise ConfigError("Layer 'output' is the whole backbone.", "drop --layer, or name an inner layer.")
        self.inner = inner
        self.layer = layer
        self.modality = inner.modality
        self.preprocess = inner.preprocess
        was = inner.training
        inner.eval()
        with torch.no_grad():
            self.num_features = int(pooled_layers(inner, dummy_batch(inner), [layer])[layer].shape[-1])
        inner.train(was)

    def forward(self, batch: Any) -> torch.Tensor:
        return pooled_layers(self.inner, batch, [self.layer])[self.layer]

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.inner.tokenize(texts)

    def pool_hidden(self, hidden: Any, batch: Any) -> torch.Tensor:
        return self.inner.pool_hidden(hidden, batch)

    def feature_points(self):
        inner = self.inner.feature_points()
        names = [n for n, _ in inner]
        return inner[: names.index(self.layer)] + [(OUTPUT, None)]

    def layer_groups(self) -> list[list[str]]:
        return [[f"inner.{n}" for n in g] for g in self.inner.layer_groups()]

    def recipe(self) -> dict[str, Any]:
        return {"type": "cut", "layer": self.layer, "name": self.name, "inner": self.inner.recipe()}

    def save_assets(self, folder: Path) -> None:
        self.inner.save_assets(folder)

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], folder: Path) -> "CutBackbone":
        from . import backbone_from_recipe

        return cls(backbone_from_recipe(recipe["inner"], folder), recipe["layer"])
