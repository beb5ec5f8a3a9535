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

import errno
import functools
import hashlib
import io
import os
import re
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .._cache import cache_dir, damaged, file_digest, inputs_digest, remove_entry, seal, sealed_digest, write_failed
from ..errors import StorageError
from .images import decode_image, resize_geometry

STORE_VERSION = 1
MMAP_BYTES = 4 << 30  # stores larger than this are memory-mapped rather than read into memory
JPEG_CHUNK = 128  # images per batched torchvision decode
STORE_CHUNK = 512  # images decoded, then written, at a time
FREE_MARGIN = 64 << 20  # room left on the cache's disk after a store is written


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
    ``store_hit`` / ``store_decoded`` / ``store_uncached`` (decoded, but the cache could not take it).

    A cached store is used only when its bytes match the SHA-256 recorded beside it (else it is
    decoded again, with a warning). It is written sequentially, never through a memory map (a
    memory-mapped write to a full disk kills the process with SIGBUS), after checking that the
    disk has room for it; when it has not, or a write fails, a store that fits in memory is kept
    there uncached (with a warning) and a larger one is refused in one line naming the folder."""
    paths = [str(p) for p in paths]
    decoder = decoder or default_decoder(device)
    shape = (len(paths), 3, size, size)
    decode = functools.partial(decode_images, size=size, interpolation=interpolation, progress=progress, workers=workers,
                               device=device, decoder=decoder)
    if not cache or not paths:
        return decode(paths)
    path = cache_dir("images") / f"{store_key(paths, size, interpolation, decoder)}.npy"
    limit = MMAP_BYTES if mmap_bytes is None else mmap_bytes
    if path.is_file():
        try:
            store = _load(path, shape, limit)
            _count(stats, "store_hit")
            return store
        except _Damaged:
            damaged(path)  # same size but other bytes: decode again and replace it
        except (OSError, ValueError):
            pass  # unreadable or incomplete entry: decode again and replace it
    return _decode_to_cache(path, paths, shape, limit, decode, stats)


class _Damaged(ValueError):
    """A cached store whose bytes differ from its recorded checksum."""


def _header(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def _sweep_temps(folder: Path) -> None:
    """Remove temporary stores left by processes that died while writing them (SIGKILL, power loss)."""
    for tmp in folder.glob(".*.tmp"):
        m = re.fullmatch(r"\..+\.(\d+)\.tmp", tmp.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            tmp.unlink(missing_ok=True)


def _decode_to_cache(path: Path, paths: list[str], shape: tuple[int, ...], limit: int, decode, stats: dict | None) -> torch.Tensor:
    """Decode the store, writing it to ``path`` as it goes (see ``image_store``)."""
    header = _header(shape)
    nbytes = int(np.prod(shape))
    big = nbytes > limit
    _sweep_temps(path.parent)
    free = shutil.disk_usage(path.parent).free
    if free < len(header) + nbytes + FREE_MARGIN:
        need = f"{_mib(len(header) + nbytes)} (and {_mib(FREE_MARGIN)} to spare), {_mib(free)} free"
        if big:  # too large to hold in memory instead
            raise StorageError(f"The decoded image store {path} needs {need}.",
                               "free space there or point TRANSFERKIT_CACHE at a folder with room (or lower --image-size).")
        write_failed(path, OSError(errno.ENOSPC, f"it needs {need}"))
        _count(stats, "store_uncached")
        return decode(paths)
    full = None if big else torch.empty(shape, dtype=torch.uint8)
    chunk = None if not big else torch.empty((min(STORE_CHUNK, shape[0]), *shape[1:]), dtype=torch.uint8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    h = hashlib.sha256(header)
    fh = None
    try:
        try:
            fh = open(tmp, "wb")
            fh.write(header)
        except OSError as e:
            fh = _give_up(fh, tmp, path, e, big)
        for start in range(0, shape[0], STORE_CHUNK):
            stop = min(shape[0], start + STORE_CHUNK)
            part = full[start:stop] if full is not None else chunk[: stop - start]
            decode(paths[start:stop], out=part)
            if fh is None:
                continue  # the cache gave up: the rest is decoded into memory only
            data = memoryview(part.numpy()).cast("B")
            try:
                fh.write(data)
            except OSError as e:
                fh = _give_up(fh, tmp, path, e, big)
                continue
            h.update(data)
        if fh is None:
            _count(stats, "store_uncached")
            return full
        try:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            fh = None
            os.replace(tmp, path)
            seal(path, h.hexdigest())
        except OSError as e:
            remove_entry(path)
            fh = _give_up(fh, tmp, path, e, big)
            _count(stats, "store_uncached")
            return full
    except BaseException:
        if fh is not None:
            fh.close()
        tmp.unlink(missing_ok=True)
        raise
    _count(stats, "store_decoded")
    return full if full is not None else _load(path, shape, limit)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _give_up(fh, tmp: Path, path: Path, err: OSError, big: bool) -> None:
    """A write to the cache failed: remove the temporary file; a store held in memory goes on
    uncached (with a warning), a memory-mapped one cannot."""
    if fh is not None:
        try:
            fh.close()
        except OSError:
            pass
    tmp.unlink(missing_ok=True)
    if big:
        raise StorageError(f"Cannot write the decoded image store {path} ({err.strerror or err}).",
                           "free space there or point TRANSFERKIT_CACHE at a folder with room (or lower --image-size).") from None
    write_failed(path, err)
    return None


def _count(stats: dict | None, key: str) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + 1


def _load(path: Path, shape: tuple[int, ...], mmap_bytes: int) -> torch.Tensor:
    """Read a store file whose bytes match its recorded SHA-256 (else ``_Damaged``): memory-mapped
    (copy-on-write, so the tensor is writable but the file is never changed) when larger than
    ``mmap_bytes``, else read into memory (and hashed there: one read of the file)."""
    expected = sealed_digest(path)
    if expected is None:
        raise ValueError(f"{path} has no checksum")
    if int(np.prod(shape)) > mmap_bytes:
        if file_digest(path) != expected:
            raise _Damaged(path)
        arr = np.load(path, mmap_mode="c", allow_pickle=False)
    else:
        arr = np.load(path, allow_pickle=False)
        if arr.shape != shape or arr.dtype != np.uint8 or not arr.flags.c_contiguous:
            raise ValueError(f"{path}: shape {arr.shape} {arr.dtype}, expected {shape} uint8")
        h = hashlib.sha256()
        with open(path, "rb") as fh:  # the file's bytes: its header, then the array as read
            h.update(fh.read(path.stat().st_size - arr.nbytes))
        h.update(memoryview(arr).cast("B"))
        if h.hexdigest() != expected:
            raise _Damaged(path)
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


def _size_ok(data: bytes) -> bool:
    """Whether a JPEG's header gives a size ``images.check_size`` accepts (else Pillow reports it)."""
    from PIL import Image

    from .images import check_size

    try:
        with Image.open(io.BytesIO(data)) as im:
            check_size("", *im.size)
    except Exception:  # too large, or a header Pillow cannot read: Pillow decodes it and says why
        return False
    return True


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
            if data[:3] == b"\xff\xd8\xff" and _size_ok(data):
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
