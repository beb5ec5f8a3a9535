"""Where transferkit caches converted weights, decoded images and embeddings, and how an entry
is trusted: each entry has a sidecar ``<entry>.sha256`` holding the SHA-256 of its bytes, written
after the entry itself; an entry whose sidecar is missing or disagrees is not used (it is rebuilt,
with a warning). A failed cache write never stops a run that can go on without the entry."""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path

from .errors import StorageError

SUM_SUFFIX = ".sha256"


def cache_dir(sub: str = "") -> Path:
    """``$TRANSFERKIT_CACHE`` or ``$XDG_CACHE_HOME/transferkit`` (default ``~/.cache/transferkit``)."""
    root = os.environ.get("TRANSFERKIT_CACHE")
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "transferkit"
    path = base / sub if sub else base
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"Cannot create the cache folder {path} ({e.strerror or e}).",
                           "point TRANSFERKIT_CACHE at a writable folder with free space.") from None
    return path


def sum_path(entry: Path) -> Path:
    return entry.with_name(entry.name + SUM_SUFFIX)


def seal(entry: Path, digest: str) -> None:
    """Record ``digest`` (SHA-256 hex of ``entry``'s bytes) beside ``entry``, atomically."""
    from ._io import atomic_write_bytes

    atomic_write_bytes(sum_path(entry), f"{digest}  {entry.name}\n".encode())


def sealed_digest(entry: Path) -> str | None:
    """The digest recorded for ``entry``, or None when it has none (or an unreadable one)."""
    try:
        text = sum_path(entry).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    m = re.match(r"([0-9a-f]{64})\b", text)
    return m.group(1) if m else None


def entry_ok(entry: Path) -> bool:
    """True when ``entry`` exists and its bytes match the digest recorded beside it. An entry that
    exists but does not match (damaged in place, or written before entries had digests) is
    announced with a warning: the caller rebuilds it."""
    if not entry.is_file():
        return False
    expected = sealed_digest(entry)
    try:
        ok = expected is not None and file_digest(entry) == expected
    except OSError:
        ok = False
    if not ok:
        damaged(entry)
    return ok


def read_entry(entry: Path) -> bytes | None:
    """The bytes of a cache entry that matches its checksum; None when it is missing, unreadable or
    damaged (with a warning for a damaged one)."""
    if not entry.is_file():
        return None
    try:
        data = entry.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != sealed_digest(entry):
        damaged(entry)
        return None
    return data


def damaged(entry: Path) -> None:
    warnings.warn(f"cache entry {entry} does not match its checksum (damaged, or written by an older version); rebuilding it.",
                  stacklevel=3)


def write_failed(entry: Path, err: OSError) -> None:
    """A cache entry could not be written: say so in one line; the run goes on without it."""
    warnings.warn(f"cannot write the cache entry {entry} ({err.strerror or err}); continuing without caching it. "
                  "Free space there or point TRANSFERKIT_CACHE at another folder.", stacklevel=3)


def write_entry(entry: Path, data: bytes, required: bool = False) -> bool:
    """Write a cache entry and its checksum atomically. On failure (disk full, read-only) what was
    written is removed, then: ``required`` raises ``StorageError`` naming the path; otherwise one
    warning line and False (the caller goes on without the entry)."""
    from ._io import atomic_write_bytes

    try:
        atomic_write_bytes(entry, data)
        seal(entry, hashlib.sha256(data).hexdigest())
        return True
    except OSError as e:
        remove_entry(entry)
        if required:
            raise StorageError(f"Cannot write {entry} ({e.strerror or e}).",
                               "free space there or point TRANSFERKIT_CACHE at a writable folder with room.") from None
        write_failed(entry, e)
        return False


def remove_entry(entry: Path) -> None:
    for p in (entry, sum_path(entry)):
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


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
