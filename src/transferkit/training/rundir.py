"""Run folders and model folders: what may be written where, one run per folder at a time.

A run folder (``fit --out RUN``) holds one run only: ``run.json`` (who started it, when, and its
status), ``metrics.jsonl``, ``steps.jsonl``, ``checkpoints/``, ``report.json`` and ``model/``.
The rules, checked before any work:

- a new run goes into a folder that does not exist or is empty; a folder that holds an earlier
  run is replaced whole only with ``overwrite=True`` (its old checkpoints and logs can never mix
  with the new run's), and ``resume=True`` continues the run that is there;
- a file, or a folder holding anything transferkit did not write, is never deleted or replaced;
- while a run works in a folder it holds an exclusive lock on ``RUN/.lock`` (``flock``: released
  by the kernel when the process ends, so a crashed run leaves no stale lock) and a second run
  into the same folder is refused;
- a run that fails or is stopped before it wrote anything leaves nothing behind.

Model folders (``--save DIR``, ``RUN/model``) follow the same spirit: an existing model folder is
replaced only with ``overwrite=True``; anything else at the path is refused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError, StorageError

MARKER = "run.json"
LOCK = ".lock"
# everything a run writes into its folder (a run folder holding anything else is not replaced)
RUN_ENTRIES = {MARKER, LOCK, "metrics.jsonl", "steps.jsonl", "report.json", "report.html", "model", "checkpoints"}
MODEL_ENTRIES = {"config.json", "model.safetensors", "README.md", "backbone", "members"}


class RunFolderError(ConfigError):
    """A run or model folder that cannot be used as asked (exit 2, before any work)."""


def is_model_dir(path: Path) -> bool:
    """A folder written by ``TransferModel.save``: config.json with a format version + weights."""
    path = Path(path)
    if not (path.is_dir() and (path / "model.safetensors").is_file() and (path / "config.json").is_file()):
        return False
    try:
        with open(path / "config.json", "rb") as fh:
            head = fh.read(1 << 16)
        return b'"format_version"' in head
    except OSError:
        return False


def _entries(path: Path) -> list[str]:
    """What a folder holds, leaving out our lock and the temporaries of interrupted atomic writes."""
    return sorted(p.name for p in path.iterdir() if p.name != LOCK and not (p.name.startswith(".") and p.name.endswith(".tmp")))


def _foreign(path: Path) -> list[str]:
    """Entries of a run folder that transferkit did not write."""
    out = [n for n in _entries(path) if n not in RUN_ENTRIES]
    model = path / "model"
    if model.exists() and not is_model_dir(model):
        out.append("model/ (not a transferkit model folder)")
    return out


def is_run_dir(path: Path) -> bool:
    """A folder that holds a transferkit run: its marker (or, from versions before the marker,
    logs/report/checkpoints), and nothing transferkit did not write."""
    path = Path(path)
    if not path.is_dir() or _foreign(path):
        return False
    names = set(_entries(path))
    return MARKER in names or bool(names & {"metrics.jsonl", "report.json", "checkpoints"})


def _listing(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def check_run_target(path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False, option: str = "--out") -> None:
    """Refuse, before any work, a run folder that cannot be used as asked (see the module doc)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{option} {path} is a file, not a folder.", f"pass a new folder name to {option}.")
    if resume:
        if not path.is_dir():
            raise RunFolderError(f"--resume {path}: no such run folder.", "pass the run folder of an interrupted 'transferkit fit'.")
        return
    if not path.exists() or not _entries(path):
        return
    foreign = _foreign(path)
    if foreign:
        raise RunFolderError(f"{option} {path} is a folder that holds files transferkit did not write ({_listing(foreign)}); "
                             "it is never deleted or replaced.", f"pass a new or empty folder to {option}.")
    if not overwrite:
        what = "a previous run" if is_run_dir(path) else "files"
        raise RunFolderError(f"{option} {path} already holds {what}.",
                             f"pass --overwrite (Python: overwrite=True) to replace it, --resume {path} to continue it, or another {option}.")


def check_model_target(path: str | os.PathLike, *, overwrite: bool = False, option: str = "--save") -> None:
    """Refuse, before any work, a model-folder path that holds something else, or a model without
    ``overwrite``."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise RunFolderError(f"{option} {path} is a file; a model is saved as a folder.", f"pass a new folder name to {option}.")
    if not _entries(path):
        return
    if not is_model_dir(path):
        raise RunFolderError(f"{option} {path} is a folder that is not a transferkit model ({_listing(_entries(path))}); "
                             "it is never deleted or replaced.", f"pass a new or empty folder to {option}.")
    if not overwrite:
        raise RunFolderError(f"{option} {path} already holds a saved model.",
                             f"pass --overwrite (Python: overwrite=True) to replace it, or another {option}.")


# ----------------------------------------------------------------------------- free space and ENOSPC
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def is_no_space(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in _NO_SPACE:
        return True
    text = str(e)
    return "No space left on device" in text or "Disk quota exceeded" in text  # safetensors' own errors


@contextlib.contextmanager
def storage_errors(target: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk (ENOSPC, quota, or safetensors' wrapped error) while writing ``target`` into
    one line naming the path."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        if is_no_space(e):
            raise StorageError(f"No space left on the device while writing {target}.",
                               "free space there or write somewhere else (--out/--save).") from None
        raise


def ensure_free_space(folder: str | os.PathLike, need: int, what: str) -> None:
    """Refuse before the work when the filesystem of ``folder`` has less than ``need`` bytes free."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if free < need:
        raise StorageError(f"Not enough free space for {what} in {folder}: {need / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free.",
                           "free space there or write somewhere else (--out/--save).")


def state_bytes(module) -> int:
    """Bytes of a module's weights and buffers as saved."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


# ----------------------------------------------------------------------------- the run folder of one run
_OPEN: dict[Path, "RunFolder"] = {}


def opened(path: str | os.PathLike | None) -> "RunFolder | None":
    """The ``RunFolder`` this process holds open for ``path``, if any."""
    return _OPEN.get(Path(path).resolve()) if path is not None else None


class RunFolder:
    """The folder of one run, locked for its duration (use as a context manager).

    ``begin()`` is called by whoever writes into the folder first (the training engine, or the
    final save): only then is an earlier run replaced (``overwrite``) and the marker written, so a
    run that fails while loading data or building its model has touched nothing. On an error, a
    folder this run created and left with neither a checkpoint nor a model is removed; otherwise
    the marker records the failure."""

    def __init__(self, path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False, config: dict | None = None):
        self.path = Path(path)
        self.resume, self.overwrite, self.config = resume, overwrite, config
        self.run_id = uuid.uuid4().hex[:12]
        self.begun = False
        self._created = False
        self._lock_fd: int | None = None

    # -- lifecycle
    def __enter__(self) -> "RunFolder":
        check_run_target(self.path, resume=self.resume, overwrite=self.overwrite)
        if not self.path.exists():
            self.path.mkdir(parents=True)
            self._created = True
        self._lock()
        # checked again under the lock: another run may have written here meanwhile
        try:
            check_run_target(self.path, resume=self.resume, overwrite=self.overwrite)
        except BaseException:
            self._unlock()
            raise
        if self.resume:
            self._read_marker()
        _OPEN[self.path.resolve()] = self
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        _OPEN.pop(self.path.resolve(), None)
        try:
            if exc is None:
                if self.begun:
                    self._write_marker("done")
            elif self._created and not (self.path / "checkpoints").exists() and not (self.path / "model").exists():
                shutil.rmtree(self.path, ignore_errors=True)  # nothing to resume or use: leave nothing behind
            elif self.begun:
                status = "preempted" if getattr(exc, "exit_code", None) == 75 else "failed"
                self._write_marker(status, error=str(exc)[:500])
        finally:
            self._unlock()
        return False

    def begin(self) -> None:
        """Called before the first write: replace an earlier run (``overwrite``), write the marker."""
        if self.begun:
            return
        self.begun = True
        if not self.resume:
            for name in _entries(self.path):
                p = self.path / name
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        self._write_marker("running")

    # -- marker
    def _read_marker(self) -> None:
        try:
            info = json.loads((self.path / MARKER).read_text())
            self.run_id = str(info.get("run_id", self.run_id))
        except (OSError, ValueError, AttributeError):
            pass

    def _write_marker(self, status: str, **extra: Any) -> None:
        from .. import __version__
        from .._io import atomic_write_json

        info: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            info = json.loads((self.path / MARKER).read_text())
        if not isinstance(info, dict) or info.get("run_id") != self.run_id:
            info = {"run_id": self.run_id, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "transferkit_version": __version__}
        info.update(status=status, pid=os.getpid(), host=socket.gethostname(), updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra)
        if status == "running" and self.resume:
            info["resumed"] = int(info.get("resumed", 0)) + 1
        with storage_errors(self.path / MARKER):
            atomic_write_json(self.path / MARKER, info)

    # -- lock
    def _lock(self) -> None:
        import fcntl

        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.read(fd, 200).decode().strip()
            os.close(fd)
            raise RunFolderError(f"{self.path} is in use by another transferkit run ({holder or 'pid unknown'}).",
                                 "wait for it to finish, or pass another --out.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None
