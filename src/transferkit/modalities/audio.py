"""Audio inputs: clips decoded once into an ``AudioStore``, cut into fixed-length windows per batch.

A batch is ``{"wave": [B, W] float32, "length": [B] int64}``: one window of ``W`` samples (the
backbone's ``AudioPreprocess.window`` at its sample rate) per clip, and how many of them are real
samples (a clip shorter than the window sits at the start, zero-padded after it; backbones pool
over the real part only). Training crops each window at a random position of its clip (the audio
augmenter); prediction takes the centre window, or with ``eval_windows="sliding"`` every window
``hop`` seconds apart (``wave`` is then ``[B, K, W]`` with ``windows`` ``[B, K]`` marking the
real ones, and backbones average their features over a clip's windows).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..backbones.base import AudioPreprocess


def prepare(backbone, inputs: Sequence[str], progress=None, *, device=None, cache: bool = True):
    from ..data.audio_store import audio_store

    pre: AudioPreprocess = backbone.preprocess
    return audio_store(list(inputs), pre.sample_rate, cache=cache, progress=progress)


def window_starts(length: int, window: int, mode: str = "center", hop: int | None = None) -> list[int]:
    """Start sample of each window over a clip of ``length`` samples: the centre window, or sliding
    windows ``hop`` apart from the start, the last one flush with the clip's end."""
    if length <= window:
        return [0]
    if mode == "center":
        return [(length - window) // 2]
    hop = hop or window
    starts = list(range(0, length - window + 1, hop))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


class AudioAugmenter:
    """Training augmentation: each window cropped at a random position of its clip (global torch
    RNG, so the engine's seed and resume restore it)."""

    def __init__(self, pre: AudioPreprocess):
        self.pre = pre

    def start(self, length: int, window: int) -> int:
        if length <= window:
            return 0
        return int(torch.randint(0, length - window + 1, (1,)).item())


def make_augmenter(backbone, device=None, hflip: bool = True) -> AudioAugmenter:
    return AudioAugmenter(backbone.preprocess)


def _window(clip: torch.Tensor, start: int, window: int) -> tuple[torch.Tensor, int]:
    part = clip[start : start + window]
    n = len(part)
    if n < window:
        part = torch.nn.functional.pad(part, (0, window - n))
    return part, n


def make_batch(backbone, prepared, idx: Sequence[int] | torch.Tensor, device: torch.device, augmenter: AudioAugmenter | None = None) -> dict[str, Any]:
    pre: AudioPreprocess = backbone.preprocess
    w = pre.window_samples
    idx = [int(i) for i in (idx.tolist() if isinstance(idx, torch.Tensor) else idx)]
    lengths = prepared.lengths
    sliding = augmenter is None and pre.eval_windows == "sliding"
    waves, valid = [], []
    for i in idx:
        clip = prepared.clip(i)
        if augmenter is not None:
            starts = [augmenter.start(int(lengths[i]), w)]
        else:
            starts = window_starts(int(lengths[i]), w, pre.eval_windows, pre.hop_samples)
        cut = [_window(clip, s, w) for s in starts]
        waves.append(torch.stack([c for c, _ in cut]))
        valid.append([n for _, n in cut])
    if not sliding:
        batch = {"wave": torch.cat(waves), "length": torch.tensor([v[0] for v in valid], dtype=torch.long)}
    else:
        k = max(len(v) for v in valid)
        wave = torch.zeros(len(idx), k, w)
        length = torch.zeros(len(idx), k, dtype=torch.long)
        for b, (x, v) in enumerate(zip(waves, valid)):
            wave[b, : len(v)] = x
            length[b, : len(v)] = torch.tensor(v)
        batch = {"wave": wave, "length": length, "windows": length > 0}
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


def dummy_batch(backbone) -> dict[str, torch.Tensor]:
    w = backbone.preprocess.window_samples
    return {"wave": torch.zeros(1, w), "length": torch.tensor([w])}
