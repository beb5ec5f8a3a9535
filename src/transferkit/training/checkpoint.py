"""Resumable training checkpoints, written atomically.

Layout under ``RUN_DIR/checkpoints/``::

    step-00000120/            one complete checkpoint (renamed into place only when complete)
        model.safetensors     model weights
        best.safetensors      other tensors of the run (here: the best-so-far weights), one file each
        optim.pt              optimiser + scheduler state and RNG states (tensors and plain
                              Python values only; read back with ``torch.load(weights_only=True)``)
        state.json            the trainer's state (position, history), every callback's state,
                              config, label names, a fingerprint of the data, checksums
    latest                    name of the newest complete checkpoint; moved only after it is complete

A crash while writing leaves a ``.step-*.tmp`` folder that is ignored and cleaned up later; a
``latest`` that points at a missing or incomplete folder falls back to the newest complete one
with a warning.
"""

from __future__ import annotations

import json
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._cache import file_digest
from .._io import atomic_dir, atomic_write_bytes
from ..errors import ModelLoadError

FILES = ("model.safetensors", "optim.pt", "state.json")


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states as tensors and plain values."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python_version": py[0],
        "python_state": torch.tensor(py[1], dtype=torch.int64),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(int(v) for v in state["python_state"].tolist()), None))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]  # state.json
    tensors: dict[str, Any]  # optim.pt
    model: dict[str, torch.Tensor]  # model.safetensors
    files: dict[str, dict[str, torch.Tensor]]  # the other .safetensors files, by name ("best": ...)

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.model

    def best_state(self) -> dict[str, torch.Tensor] | None:
        return self.files.get("best")


def _complete(folder: Path) -> bool:
    """All files present and equal to the checksums recorded when the checkpoint was written."""
    if not (folder.is_dir() and all((folder / f).is_file() for f in FILES)):
        return False
    try:
        sums = json.loads((folder / "state.json").read_text())["checksums"]
        return all(file_digest(folder / name) == digest for name, digest in sums.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def save(run_dir: Path, step: int, model: torch.nn.Module, tensors: dict[str, Any], state: dict[str, Any],
         files: dict[str, dict[str, torch.Tensor]] | None = None, keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically (``files``: more tensors, one ``NAME.safetensors`` each),
    move ``latest`` to it, keep the newest ``keep``."""
    from safetensors.torch import save_file

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*.tmp"):  # left by a crash during an earlier write
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step-{step:08d}"
    with atomic_dir(root / name) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        for fname, tdict in (files or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tdict.items()}, str(tmp / f"{fname}.safetensors"))
        torch.save(tensors, tmp / "optim.pt")
        sums = {f.name: file_digest(f) for f in sorted(tmp.iterdir())}  # a bit flip is caught at load
        (tmp / "state.json").write_text(json.dumps({**state, "checksums": sums}))
    atomic_write_bytes(root / "latest", name.encode())
    complete = sorted(p for p in root.glob("step-*") if _complete(p))
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return root / name


def _candidates(run_dir: Path) -> list[Path]:
    """Complete checkpoints, the one ``latest`` names first, then the others newest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    pointer = root / "latest"
    first: Path | None = None
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if _complete(target):
            first = target
        else:
            warnings.warn(f"checkpoint {target.name} named by {pointer} is incomplete or corrupt; using the newest complete one", stacklevel=3)
    rest = []
    for p in sorted(root.glob("step-*"), reverse=True):
        if p == first:
            continue
        if _complete(p):
            rest.append(p)
        elif first is None:
            warnings.warn(f"skipping incomplete or corrupt checkpoint {p}", stacklevel=3)
    return ([first] if first is not None else []) + rest


def find_latest(run_dir: Path) -> Path | None:
    found = _candidates(run_dir)
    return found[0] if found else None


def _read(path: Path) -> Checkpoint:
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    tensors = torch.load(path / "optim.pt", weights_only=True, map_location="cpu")  # a pickle with code in it fails here, never runs
    model = load_file(str(path / "model.safetensors"))
    files = {f.name[: -len(".safetensors")]: load_file(str(f)) for f in sorted(path.glob("*.safetensors")) if f.name != "model.safetensors"}
    return Checkpoint(path, state, tensors, model, files)


def load(run_dir: Path) -> Checkpoint:
    """The newest checkpoint that reads completely; one that does not (even with matching
    checksums: e.g. a file that is not safetensors) is skipped with a warning for the one before."""
    candidates = _candidates(run_dir)
    if not candidates:
        raise ModelLoadError(f"No complete checkpoint in {Path(run_dir) / 'checkpoints'}.",
                             "resume a run that was started with --checkpoint-every (or stopped by SIGTERM).")
    problems = []
    for path in candidates:
        try:
            return _read(path)
        except Exception as e:
            problems.append(f"{path.name}: {type(e).__name__}: {str(e)[:160]}")
            if path is not candidates[-1]:
                warnings.warn(f"cannot read checkpoint {path} ({problems[-1]}); falling back to the previous one", stacklevel=2)
    raise ModelLoadError(f"Cannot read any checkpoint in {Path(run_dir) / 'checkpoints'} ({'; '.join(problems)[:400]}).",
                         "start the run again in a new folder (or with --overwrite).")
