"""Image decoding: EXIF orientation, RGBA composited on white, grayscale/palette/CMYK to RGB.

``decode_image`` gives one image as a uint8 tensor at the stored resolution; ``store.image_store``
decodes a whole set once (cached on disk) and training augments those tensors in batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

_INTERP = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1, "box": 4, "hamming": 5}

#: the most one side of an image may exceed the other: resizing the shorter side to R makes an
#: R x (R * ratio) intermediate image (a 1 x 1,000,000 PNG would need 200 GB at R = 256)
MAX_ASPECT = 50


class ImageReadError(DataError):
    """An image file that cannot be used; ``kind`` says why.

    Kinds: ``missing_file``, ``empty_file`` (0 bytes), ``not_an_image`` (e.g. a text or HTML file
    named .jpg), ``truncated`` (the file ends early), ``too_large`` (more pixels than Pillow's
    ``Image.MAX_IMAGE_PIXELS``, or sides more than ``MAX_ASPECT`` times apart) or ``unreadable``
    (unknown format, broken data).
    """

    def __init__(self, kind: str, message: str, fix: str | None = None):
        self.kind = kind
        super().__init__(message, fix)


def _looks_like_text(head: bytes) -> bool:
    """True when the first bytes of a file are UTF-8 text (no NUL, mostly printable)."""
    if not head or b"\0" in head:
        return False
    for cut in range(4):  # the sample may end inside a multi-byte character
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * max(1, len(text))


def _unidentified(path: str | Path, raw: bytes | None) -> ImageReadError:
    """The error for a file PIL does not recognise: a text file under an image name, or unknown bytes."""
    try:
        head = raw[:1024] if raw is not None else Path(path).open("rb").read(1024)
    except OSError:
        head = b""
    if _looks_like_text(head):
        start = " ".join(head[:40].decode("utf-8", "replace").split())
        return ImageReadError(
            "not_an_image", f"{path} is a text file, not an image (it starts with {start!r}).",
            "remove it or replace it with the real image (a web page or error message saved under an image name?).",
        )
    return ImageReadError("unreadable", f"Cannot read image {path} (not an image format Pillow knows).", "remove or replace the file.")


def check_size(path: str | Path, w: int, h: int) -> None:
    """Refuse an image whose decoded size is unreasonable, from its header alone (before decoding)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb bound; None when a user lifted it
    if limit and w * h > limit:
        raise ImageReadError("too_large", f"Image {path} is {w}x{h} pixels, more than the {limit:,} that PIL.Image.MAX_IMAGE_PIXELS allows.",
                             "downscale it (or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file).")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageReadError("too_large", f"Image {path} is {w}x{h} pixels: one side is more than {MAX_ASPECT} times the other.",
                             "crop it to the part that matters, or remove it.")


def open_rgb(path: str | Path, data: bytes | None = None):
    """Open an image as RGB PIL image, applying EXIF orientation and compositing transparency on white.

    The whole image is decoded (a truncated file fails here, not later). ``data``: the file's bytes
    when the caller has read them already (errors still name ``path``). Raises ``ImageReadError``.
    """
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        if (len(data) if data is not None else Path(path).stat().st_size) == 0:
            raise ImageReadError("empty_file", f"Image file {path} is empty (0 bytes).", "remove or replace the file.")
        with Image.open(io.BytesIO(data) if data is not None else path) as im:
            check_size(path, *im.size)  # from the header: nothing decoded yet
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
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError("missing_file", f"Image file {path} does not exist.", "check the path in your data.") from None
    except UnidentifiedImageError:
        raise _unidentified(path, data) from None
    except Image.DecompressionBombError as e:
        raise ImageReadError("too_large", f"Image {path} is too large to decode ({e}).",
                             "downscale it (or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file).") from None
    except Exception as e:
        kind = "truncated" if isinstance(e, EOFError) or "truncated" in str(e).lower() else "unreadable"
        raise ImageReadError(kind, f"Cannot read image {path} ({type(e).__name__}: {e}).", "remove or replace the file.") from None


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


def resize_geometry(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """``(new_w, new_h, left, top)``: the shorter side resized to ``size``, then a centred square crop."""
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    return nw, nh, (nw - size) // 2, (nh - size) // 2


def decode_image(path: str | Path, size: int, interpolation: str = "bicubic") -> torch.Tensor:
    """Decode to a ``[3, size, size]`` uint8 tensor: resize the shorter side to ``size``, centre crop."""
    im = open_rgb(path)
    nw, nh, left, top = resize_geometry(*im.size, size)
    im = im.resize((nw, nh), resample=_INTERP.get(interpolation, 3))
    im = im.crop((left, top, left + size, top + size))
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
