"""The decoded audio store: every clip decoded once (mono, at the weights' rate), cached on disk.

``audio_store(paths, rate)`` gives an ``AudioStore``: all clips one after the other in one float32
tensor, with their offsets, the array training cuts its windows from. It is written to the cache
as one safetensors file keyed by the files' content and the sample rate, so a later run over the
same files reads it back instead of decoding; a changed file changes the key.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .._cache import cache_dir, inputs_digest
from .._io import atomic_path
from .audio import read_audio

STORE_VERSION = 1


@dataclass
class AudioStore:
    """Clips of different lengths in one tensor: clip ``i`` is ``samples[offsets[i]:offsets[i + 1]]``."""

    samples: torch.Tensor  # float32 [total]
    offsets: torch.Tensor  # int64 [N + 1]
    sample_rate: int

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def clip(self, i: int) -> torch.Tensor:
        return self.samples[int(self.offsets[i]) : int(self.offsets[i + 1])]

    @classmethod
    def from_clips(cls, clips: Sequence[np.ndarray], sample_rate: int) -> "AudioStore":
        lengths = np.asarray([len(c) for c in clips], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        samples = np.concatenate(clips).astype(np.float32) if len(clips) else np.zeros(0, dtype=np.float32)
        return cls(torch.from_numpy(samples), torch.from_numpy(offsets), int(sample_rate))


def store_key(paths: Sequence[str], rate: int) -> str:
    h = hashlib.sha256(f"audio-store-v{STORE_VERSION}|{rate}|".encode())
    h.update(inputs_digest(paths, "audio").encode())
    return h.hexdigest()[:32]


def decode_clips(paths: Sequence[str], rate: int, progress: Callable[[int], None] | None = None,
                 workers: int | None = None) -> list[np.ndarray]:
    """Decode every file (mono, resampled to ``rate``) on a thread pool, in order; the first
    unusable file raises its ``AudioReadError``."""
    def one(p: str) -> np.ndarray:
        return read_audio(p, rate)

    workers = workers or min(4, os.cpu_count() or 1)
    out = []
    if workers <= 1 or len(paths) < 2:
        for p in paths:
            out.append(one(p))
            if progress is not None:
                progress(1)
        return out
    pool = ThreadPoolExecutor(workers, thread_name_prefix="transferkit-audio")
    try:
        for clip in pool.map(one, paths):
            out.append(clip)
            if progress is not None:
                progress(1)
    finally:
        pool.shutdown(cancel_futures=True)
    return out


def audio_store(paths: Sequence[str], rate: int, *, cache: bool = True, progress: Callable[[int], None] | None = None,
                stats: dict | None = None) -> AudioStore:
    """All clips at ``rate`` Hz as one ``AudioStore``, decoded once and cached (``stats`` counts
    ``store_hit`` / ``store_decoded``)."""
    from safetensors.torch import load_file, save_file

    paths = [str(p) for p in paths]
    if not cache or not paths:
        return AudioStore.from_clips(decode_clips(paths, rate, progress), rate)
    path = cache_dir("audio") / f"{store_key(paths, rate)}.safetensors"
    if path.is_file():
        try:
            t = load_file(str(path))
            store = AudioStore(t["samples"], t["offsets"], rate)
            if len(store) == len(paths) and int(store.offsets[-1]) == len(store.samples):
                if stats is not None:
                    stats["store_hit"] = stats.get("store_hit", 0) + 1
                return store
        except Exception:
            pass  # unreadable or incomplete entry: decode again and replace it
    store = AudioStore.from_clips(decode_clips(paths, rate, progress), rate)
    with atomic_path(path) as tmp:
        save_file({"samples": store.samples.contiguous(), "offsets": store.offsets.contiguous()}, str(tmp))
    if stats is not None:
        stats["store_decoded"] = stats.get("store_decoded", 0) + 1
    return store
