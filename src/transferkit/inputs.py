"""From raw inputs (image paths, texts) to backbone batches.

Images are decoded once to a uint8 tensor store at the weights' resize resolution; batches are cut
from it, augmented on the device in one go (kornia: random resized crop + flip with per-sample
randomness) and normalised with the weights' mean/std. Texts are tokenised per batch with dynamic
padding.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .backbones.base import Backbone, ImagePreprocess


def prepare(backbone: Backbone, inputs: Sequence[str], progress=None) -> Any:
    """Decode images once (uint8 [N, 3, R, R]); texts stay strings."""
    if backbone.modality == "image":
        from .data.images import decode_images

        pre: ImagePreprocess = backbone.preprocess  # type: ignore[assignment]
        return decode_images(list(inputs), pre.resize_size, pre.interpolation, progress)
    return list(inputs)


class Augmenter:
    """Batched image augmentation on the device with per-sample randomness."""

    def __init__(self, pre: ImagePreprocess, hflip: bool = True, scale: tuple[float, float] = (0.35, 1.0)):
        import kornia.augmentation as K

        ops = [K.RandomResizedCrop((pre.input_size, pre.input_size), scale=scale, ratio=(3 / 4, 4 / 3))]
        if hflip:
            ops.append(K.RandomHorizontalFlip())
        self.aug = K.AugmentationSequential(*ops)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.aug(x)


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def make_batch(
    backbone: Backbone,
    prepared: Any,
    idx: Sequence[int] | torch.Tensor,
    device: torch.device,
    augmenter: Augmenter | None = None,
) -> Any:
    if backbone.modality == "image":
        pre: ImagePreprocess = backbone.preprocess  # type: ignore[assignment]
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        x = prepared.index_select(0, idx_t)
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
        x = x.float().div_(255.0)
        if augmenter is not None:
            x = augmenter(x)
        else:
            x = _center_crop(x, pre.input_size)
        mean = torch.tensor(pre.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(pre.std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x
    texts = [prepared[int(i)] for i in idx]
    enc = backbone.tokenize(texts)  # type: ignore[attr-defined]
    return {k: v.to(device, non_blocking=True) for k, v in enc.items()}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError("--device cuda was asked for but no CUDA GPU is available.", "use --device cpu or auto.")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA, plain fp32 elsewhere."""
    import contextlib

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
