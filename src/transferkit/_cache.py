"""Where transferkit caches converted weights and embeddings."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir(sub: str = "") -> Path:
    """``$TRANSFERKIT_CACHE`` or ``$XDG_CACHE_HOME/transferkit`` (default ``~/.cache/transferkit``)."""
    root = os.environ.get("TRANSFERKIT_CACHE")
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "transferkit"
    path = base / sub if sub else base
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def inputs_digest(inputs, modality: str) -> str:
    """Hash of the inputs' content in order: each file's bytes (images, audio), or each text.

    Read afresh on every call, so a file changed on disk changes the digest."""
    h = hashlib.sha256(modality.encode())
    for x in inputs:
        if modality != "text":
            h.update(bytes.fromhex(file_digest(x)))
        else:
            h.update(hashlib.sha256(x.encode("utf-8")).digest())
    return h.hexdigest()
