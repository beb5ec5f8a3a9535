"""The decoded image store: every image decoded once into one uint8 tensor, cached on disk.

``image_store(paths, size)`` gives ``[N, 3, size, size]`` uint8 (shorter side resized to ``size``,
centre crop), the array training cuts its batches from. It is written to the cache as one ``.npy``
file keyed by the files' content and the preprocessing (size, interpolation, decoder), so a later
run over the same files reads it back instead of decoding; a changed file changes the key. The file
is filled in place while decoding (a store larger than memory never has to fit in memory) and is
memory-mapped when it is larger than ``MMAP_BYTES``, read into memory otherwise.

Decoding runs on a thread pool (Pillow releases the GIL while it decodes and resizes). With
``decoder="torchvision"`` (the default on CUDA) JPEG files are decoded in batches by
``torchvision.io.decode_jpeg`` on the device (nvJPEG on a GPU) and resized there; other formats,
and any JPEG it cannot decode, go through Pillow.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .._cache import cache_dir, inputs_digest
from .._io import atomic_path
from .images import decode_image, resize_geometry

STORE_VERSION = 1
MMAP_BYTES = 4 << 30  # stores larger than this are memory-mapped rather than read into memory
JPEG_CHUNK = 128  # images per batched torchvision decode


def default_decoder(device: str | torch.device | None) -> str:
    """``torchvision`` (batched JPEG decode on the GPU) on CUDA, ``pil`` elsewhere."""
    return "torchvision" if device is not None and torch.device(device).type == "cuda" else "pil"


def store_key(paths: Sequence[str], size: int, interpolation: str, decoder: str) -> str:
    """Cache key: the files' content in order, the resolution, the interpolation and the decoder."""
    h = hashlib.sha256(f"store-v{STORE_VERSION}|{size}|{interpolation}|{decoder}|".encode())
    h.update(inputs_digest(paths, "image").encode())
    return h.hexdigest()[:32]


def image_store(
    paths: Sequence[str],
    size: int,
    interpolation: str = "bicubic",
    *,
    device: str | torch.device | None = None,
    decoder: str | None = None,
    cache: bool = True,
    mmap_bytes: int | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """All images as one ``[N, 3, size, size]`` uint8 tensor (CPU), decoded once and cached.

    ``device``: where JPEGs are decoded with the torchvision decoder (the result is on the CPU).
    ``decoder``: ``pil`` | ``torchvision`` (default: ``default_decoder(device)``). ``stats`` counts
    ``store_hit`` / ``store_decoded``."""
    paths = [str(p) for p in paths]
    decoder = decoder or default_decoder(device)
    shape = (len(paths), 3, size, size)
    if not cache or not paths:
        return decode_images(paths, size, interpolation, progress, workers=workers, device=device, decoder=decoder)
    path = cache_dir("images") / f"{store_key(paths, size, interpolation, decoder)}.npy"
    limit = MMAP_BYTES if mmap_bytes is None else mmap_bytes
    if path.is_file():
        try:
            store = _load(path, shape, limit)
            _count(stats, "store_hit")
            return store
        except (OSError, ValueError):
            pass  # unreadable or incomplete entry: decode again and replace it
    with atomic_path(path) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        decode_images(paths, size, interpolation, progress, out=torch.from_numpy(arr), workers=workers, device=device, decoder=decoder)
        arr.flush()
        del arr
    _count(stats, "store_decoded")
    return _load(path, shape, limit)


def _count(stats: dict | None, key: str) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + 1


def _load(path: Path, shape: tuple[int, ...], mmap_bytes: int) -> torch.Tensor:
    """Read a store file: memory-mapped (copy-on-write, so the tensor is writable but the file is
    never changed) when larger than ``mmap_bytes``, else into memory."""
    big = int(np.prod(shape)) > mmap_bytes
    arr = np.load(path, mmap_mode="c" if big else None, allow_pickle=False)
    if arr.shape != shape or arr.dtype != np.uint8:
        raise ValueError(f"{path}: shape {arr.shape} {arr.dtype}, expected {shape} uint8")
    return torch.from_numpy(arr)


def decode_images(
    paths: Sequence[str],
    size: int,
    interpolation: str = "bicubic",
    progress: Callable[[int], None] | None = None,
    *,
    out: torch.Tensor | None = None,
    workers: int | None = None,
    device: str | torch.device | None = None,
    decoder: str = "pil",
) -> torch.Tensor:
    """Decode many images into one ``[N, 3, size, size]`` uint8 tensor (``out`` when given)."""
    out = out if out is not None else torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    todo = list(range(len(paths)))
    if decoder == "torchvision":
        todo = _decode_jpegs(paths, todo, size, interpolation, out, device or "cpu", progress)
    elif decoder != "pil":
        raise ValueError(f"unknown decoder {decoder!r} (use pil or torchvision)")

    def one(i: int) -> None:
        out[i] = decode_image(paths[i], size, interpolation)

    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(todo) < 2:
        for i in todo:
            one(i)
            if progress is not None:
                progress(1)
        return out
    pool = ThreadPoolExecutor(workers, thread_name_prefix="transferkit-decode")
    try:
        for _ in pool.map(one, todo):
            if progress is not None:
                progress(1)
    finally:
        pool.shutdown(cancel_futures=True)  # a bad file stops the rest at once
    return out


def resize_center_crop(img: torch.Tensor, size: int, interpolation: str = "bicubic") -> torch.Tensor:
    """``[3, H, W]`` uint8 -> ``[3, size, size]`` uint8: shorter side to ``size`` (antialiased), centre crop;
    the tensor counterpart of ``decode_image``'s Pillow resize."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    h, w = img.shape[-2:]
    nw, nh, left, top = resize_geometry(w, h, size)
    mode = {"bilinear": InterpolationMode.BILINEAR, "nearest": InterpolationMode.NEAREST}.get(interpolation, InterpolationMode.BICUBIC)
    img = F.resize(img, [nh, nw], interpolation=mode, antialias=True)
    return img[:, top : top + size, left : left + size]


def _decode_jpegs(paths, todo: list[int], size: int, interpolation: str, out: torch.Tensor, device, progress) -> list[int]:
    """Decode the JPEG files among ``todo`` with torchvision on ``device``, in batches; returns the
    indices left for Pillow (other formats, and files torchvision could not decode)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(datas: list[bytes]) -> list[torch.Tensor]:
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)

    left = []
    for start in range(0, len(todo), JPEG_CHUNK):  # files are read a chunk at a time, never all at once
        raw: dict[int, bytes] = {}
        for i in todo[start : start + JPEG_CHUNK]:
            try:
                data = Path(paths[i]).read_bytes()
            except OSError:
                data = b""
            if data[:3] == b"\xff\xd8\xff":
                raw[i] = data
            else:
                left.append(i)  # not a JPEG, or missing: Pillow decodes it or reports the problem
        try:
            pairs = list(zip(raw, decode(list(raw.values())))) if raw else []
        except RuntimeError:  # one undecodable file fails the batch: decode one by one
            pairs = []
            for i, data in raw.items():
                try:
                    pairs.append((i, decode([data])[0]))
                except RuntimeError:
                    left.append(i)
        for i, img in pairs:
            out[i] = resize_center_crop(img, size, interpolation).cpu()
        if progress is not None and pairs:
            progress(len(pairs))
    return sorted(left)
