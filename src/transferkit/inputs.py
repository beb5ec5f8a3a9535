"""From raw inputs (image paths, texts) to backbone batches.

Images are decoded once into a uint8 tensor store at the weights' resize resolution (cached on disk,
see ``data.store``); on a GPU the whole store moves to device memory when it fits, so a batch is an
index into it. Batches are augmented on the device in one go (kornia: random resized crop + flip with
per-sample randomness) and normalised with the weights' mean/std. Texts are tokenised per batch with
dynamic padding; ``length_grouped`` orders training batches so that each holds texts of similar length.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import torch

from .backbones.base import Backbone, ImagePreprocess


def prepare(backbone: Backbone, inputs: Sequence[str], progress=None, *, device: torch.device | str | None = None,
            cache: bool = True) -> Any:
    """Decode images once (uint8 ``[N, 3, R, R]`` on the CPU, cached on disk unless ``cache=False``;
    on CUDA JPEGs are decoded on the GPU); texts stay strings; other modalities go to their handler
    (``transferkit.modalities``: audio clips decoded once into an ``AudioStore``)."""
    from .modalities import handler

    if (h := handler(backbone.modality)) is not None:
        return h.prepare(backbone, inputs, progress, device=device, cache=cache)
    if backbone.modality == "image":
        from .data.store import image_store

        pre: ImagePreprocess = backbone.preprocess  # type: ignore[assignment]
        return image_store(list(inputs), pre.resize_size, pre.interpolation, device=device, cache=cache, progress=progress)
    return list(inputs)


def to_device(prepared: Any, device: torch.device, max_fraction: float = 0.25) -> Any:
    """A decoded image store moved to the GPU when it takes at most ``max_fraction`` of the free
    device memory (batches are then cut on the device); otherwise, and for texts, unchanged."""
    if device.type != "cuda" or not isinstance(prepared, torch.Tensor):
        return prepared
    free, _ = torch.cuda.mem_get_info(device)
    if prepared.numel() * prepared.element_size() > max_fraction * free:
        return prepared
    return prepared.to(device)


def length_grouped(order: torch.Tensor, lengths: Sequence[int], batch_size: int, group: int = 50) -> torch.Tensor:
    """``order`` regrouped so that consecutive batches hold texts of similar length: each run of
    ``group`` batches is sorted by length, longest first (less padding; the set of samples and the
    randomness of which samples meet stay those of ``order``)."""
    size = batch_size * group
    parts = []
    for start in range(0, len(order), size):
        part = order[start : start + size]
        keys = torch.tensor([-lengths[int(i)] for i in part])
        parts.append(part[torch.argsort(keys, stable=True)])
    return torch.cat(parts) if parts else order


class Augmenter:
    """Batched image augmentation on the device with per-sample randomness.

    On CUDA the crops are one batched warp (kornia's ``resample`` mode); elsewhere each crop is sliced
    and resized on its own (``slice``), which is cheaper in CPU arithmetic. Measured on the 2-core CPU
    with tiny 16 px images, where launching the operations is all the cost, for a batch of 256: 6.6 ms
    sliced vs 3.6 ms warped; at 224 px on the CPU the arithmetic wins instead (186 vs 475 ms)."""

    def __init__(self, pre: ImagePreprocess, hflip: bool = True, scale: tuple[float, float] = (0.35, 1.0),
                 device: torch.device | str | None = None):
        import kornia.augmentation as K

        mode = "resample" if device is not None and torch.device(device).type == "cuda" else "slice"
        ops = [K.RandomResizedCrop((pre.input_size, pre.input_size), scale=scale, ratio=(3 / 4, 4 / 3), cropping_mode=mode)]
        if hflip:
            ops.append(K.RandomHorizontalFlip())
        self.aug = K.AugmentationSequential(*ops)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.aug(x)


def make_augmenter(backbone: Backbone, device: torch.device | str | None = None, hflip: bool = True):
    """The training augmenter for the backbone's modality: batched image crops/flips, random audio
    window crops; None for texts."""
    from .modalities import handler

    if (h := handler(backbone.modality)) is not None:
        return h.make_augmenter(backbone, device=device, hflip=hflip)
    if backbone.modality == "image":
        return Augmenter(backbone.preprocess, hflip=hflip, device=device)
    return None


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
    from .modalities import handler

    if (h := handler(backbone.modality)) is not None:
        return h.make_batch(backbone, prepared, idx, device, augmenter)
    if backbone.modality == "image":
        pre: ImagePreprocess = backbone.preprocess  # type: ignore[assignment]
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        if prepared.device.type != "cpu":  # the store lives on the device: index it there
            x = prepared.index_select(0, idx_t.to(prepared.device, non_blocking=True))
        else:
            x = prepared.index_select(0, idx_t)
            if device.type == "cuda":
                x = x.pin_memory().to(device, non_blocking=True)
        if augmenter is None:  # crop before converting: less to convert
            x = _center_crop(x, pre.input_size)
        x = x.float().div_(255.0)
        if augmenter is not None:
            x = augmenter(x)
        mean, std = _norm(tuple(pre.mean), tuple(pre.std), x.device)
        x = (x - mean) / std
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x
    texts = [prepared[int(i)] for i in idx]
    enc = backbone.tokenize(texts)  # type: ignore[attr-defined]
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in enc.items()}
    return {k: v.to(device) for k, v in enc.items()}


@functools.lru_cache(maxsize=16)
def _norm(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalisation constants, made once per device (no host-to-device copy per batch)."""
    return (torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1))


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
