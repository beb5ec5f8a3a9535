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
