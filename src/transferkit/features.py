"""Frozen-backbone embeddings, computed once and cached on disk.

The cache key covers the backbone's weights, its preprocessing and the data's content, so a second
run on the same data reuses the embeddings and any change recomputes them.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from ._cache import cache_dir, read_entry, write_entry
from .backbones.base import Backbone
from .backbones.layers import OUTPUT, dummy_batch, pooled_layers
from .inputs import autocast, make_batch, prepare, resolve_device, to_device


def backbone_fingerprint(backbone: Backbone) -> str:
    """Hash of the backbone's recipe and every tensor of its state (weights and buffers)."""
    h = hashlib.sha256(json.dumps(backbone.recipe(), sort_keys=True).encode())
    for name, t in sorted(backbone.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def compute_layer_features(
    backbone: Backbone,
    inputs: list[str],
    layers: list[str],
    batch_size: int = 128,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Pooled features ``{layer: [N, D_layer]}`` (float32, input order) at the named feature points
    (``"output"``: the backbone's own features), all from one forward pass per batch. Texts are
    batched by length, so short texts are not padded to long ones (about 5x faster on fortunes)."""
    from .training.callbacks.progress import progress_bar

    dev = resolve_device(device) if isinstance(device, str) else device
    prepared = to_device(prepare(backbone, inputs, device=dev), dev)
    n = len(inputs)
    order = np.argsort([len(x) for x in inputs], kind="stable") if backbone.modality == "text" else np.arange(n)
    was_training = backbone.training
    backbone.eval().to(dev)
    channels_last = dev.type == "cuda" and backbone.modality == "image"
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    parts: dict[str, list[torch.Tensor]] = {}
    with progress_bar(progress) as bar:
        task = bar.add_task("features", total=n, info=backbone.name)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            with autocast(dev):
                got = pooled_layers(backbone, make_batch(backbone, prepared, idx.tolist(), dev), layers)
            for name, feats in got.items():  # kept on the device: no wait for the GPU per batch
                parts.setdefault(name, []).append(feats.float())
            bar.update(task, advance=len(idx))
    inverse = torch.as_tensor(np.argsort(order, kind="stable"))
    out = {name: torch.cat(p).cpu()[inverse] for name, p in parts.items()}
    if n == 0:  # no inputs: empty features of the right widths
        dims = {OUTPUT: backbone.num_features}
        if any(name != OUTPUT for name in layers):
            got = pooled_layers(backbone, dummy_batch(backbone), [name for name in layers if name != OUTPUT])
            dims.update({name: t.shape[-1] for name, t in got.items()})
        out = {name: torch.zeros((0, dims[name])) for name in layers}
    backbone.train(was_training).cpu()
    if channels_last:
        backbone.to(memory_format=torch.contiguous_format)
    return out


def compute_features(
    backbone: Backbone, inputs: list[str], batch_size: int = 128, device: str | torch.device = "auto", progress: bool = False
) -> torch.Tensor:
    """Pooled features ``[N, D]`` (float32, input order) of the backbone's output."""
    return compute_layer_features(backbone, inputs, [OUTPUT], batch_size, device, progress)[OUTPUT]


def extract_layer_features(
    backbone: Backbone,
    data,
    layers: list[str],
    *,
    batch_size: int = 128,
    device: str | torch.device = "auto",
    cache: bool = True,
    stats: dict | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """``compute_layer_features`` for ``TaskData``, cached by backbone + preprocessing + data + layers."""
    if not cache:
        return compute_layer_features(backbone, data.inputs, layers, batch_size, device, progress)
    key = hashlib.sha256(
        f"{backbone_fingerprint(backbone)}|{json.dumps(backbone.preprocess.to_dict(), sort_keys=True)}|{data.content_digest()}"
        f"|{','.join(layers)}".encode()
    ).hexdigest()[:32]
    path = cache_dir("features") / f"{key}.safetensors"
    from safetensors.torch import load, save

    raw = read_entry(path)  # None for a damaged entry (bytes differ from its checksum): recomputed, with a warning
    if raw is not None:
        try:
            feats = load(raw)
            if all(feats[n].shape[0] == len(data) for n in layers):
                if stats is not None:
                    stats["cache_hit"] = stats.get("cache_hit", 0) + 1
                return {n: feats[n] for n in layers}
        except Exception:
            pass  # unreadable or incomplete cache entry: recompute and overwrite
    feats = compute_layer_features(backbone, data.inputs, layers, batch_size, device, progress)
    write_entry(path, save({n: t.contiguous() for n, t in feats.items()}))
    if stats is not None:
        stats["computed"] = stats.get("computed", 0) + 1
    return feats


def extract_features(
    backbone: Backbone,
    data,
    *,
    batch_size: int = 128,
    device: str | torch.device = "auto",
    cache: bool = True,
    stats: dict | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Pooled features ``[N, D]`` (float32) for ``TaskData``; cached by backbone + preprocessing + data."""
    return extract_layer_features(
        backbone, data, [OUTPUT], batch_size=batch_size, device=device, cache=cache, stats=stats, progress=progress
    )[OUTPUT]
