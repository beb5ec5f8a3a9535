"""Image decoding: EXIF orientation, RGBA composited on white, grayscale/palette/CMYK to RGB.

Each image is decoded once into a uint8 tensor at the stored resolution; training augments these
tensors in batches (on the GPU when there is one) instead of re-decoding files every epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

_INTERP = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1, "box": 4, "hamming": 5}


def open_rgb(path: str | Path):
    """Open an image as RGB PIL image, applying EXIF orientation and compositing transparency on white."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I") or im.mode == "F":
                im = _to_8bit(im)
            if im.mode == "P":
                im = im.convert("RGBA")
            if im.mode in ("RGBA", "LA") or "transparency" in im.info:
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"Image file {path} does not exist.", "check the path in your data.") from None
    except Exception as e:
        raise DataError(
            f"Cannot read image {path} ({type(e).__name__}: {e}).",
            "remove or replace the file.",
        ) from None


def _to_8bit(im):
    """16/32-bit integer or float greyscale -> 8-bit 'L' by scaling (PIL's own convert clips at 255,
    which turns a 16-bit image almost white)."""
    from PIL import Image

    a = np.nan_to_num(np.asarray(im, dtype=np.float64)).clip(0, None)
    top = float(a.max()) if a.size else 0.0
    if im.mode.startswith("I;16"):
        full = 65535.0
    elif im.mode == "F" and top <= 1.0:
        full = 1.0
    else:
        full = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
    return Image.fromarray(np.rint(a * (255.0 / full)).clip(0, 255).astype(np.uint8))


def decode_image(path: str | Path, size: int, interpolation: str = "bicubic") -> torch.Tensor:
    """Decode to a ``[3, size, size]`` uint8 tensor: resize the shorter side to ``size``, centre crop."""
    im = open_rgb(path)
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), resample=_INTERP.get(interpolation, 3))
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def decode_images(paths: list[str], size: int, interpolation: str = "bicubic", progress=None) -> torch.Tensor:
    """Decode many images into one ``[N, 3, size, size]`` uint8 tensor."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, p in enumerate(paths):
        out[i] = decode_image(p, size, interpolation)
        if progress is not None:
            progress(1)
    return out
