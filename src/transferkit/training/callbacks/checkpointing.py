"""Resumable checkpoints: written every N steps or epochs (and on request, e.g. at a preemption),
restored on ``--resume`` after checking that the model, task and data are the ones of the run.

A checkpoint holds the model, the optimiser and scheduler, the data-order generator, every RNG,
the trainer's state and every callback's state, so a resumed CPU run ends bit-for-bit as an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError
from .. import checkpoint
from ..rundir import ensure_free_space, state_bytes, storage_errors
from .base import Callback, register_callback

DRIFT_REFUSED = ("backbone", "backbone_weights", "strategy", "image_size", "pooling", "max_length", "head", "audio_window")


class ResumeError(ConfigError):
    """A resume that would change the model or the task (exit 2, before any training)."""


def data_fingerprint(train_data, val_data) -> dict[str, Any]:
    """Sizes and a content digest of the training and validation sets (inputs and targets), so a
    resume on other data is noticed."""
    from ..._cache import inputs_digest

    out: dict[str, Any] = {}
    for name, part in (("train", train_data), ("val", val_data)):
        if part is None:
            out[f"n_{name}"] = 0
            continue
        h = hashlib.sha256(inputs_digest(part.inputs, part.modality).encode())
        h.update(np.ascontiguousarray(part.targets).tobytes())
        out[f"n_{name}"], out[f"{name}_digest"] = len(part), h.hexdigest()[:16]
    return out


def check_drift(saved: dict[str, Any], cfg, saved_labels: list[str], model, saved_data: dict[str, Any] | None = None,
                data: dict[str, Any] | None = None) -> list[str]:
    """Refuse a resume that changes the model or the task; warn about other changed options and
    about changed training/validation data."""
    changed = {k: (saved.get(k), v) for k, v in cfg.to_dict().items() if k in saved and saved.get(k) != v}
    refused = {k: v for k, v in changed.items() if k in DRIFT_REFUSED}
    if refused or list(saved_labels) != list(model.label_names):
        what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items()) or f"labels {saved_labels} -> {model.label_names}"
        raise ResumeError(f"Cannot resume: the run was started with a different model or task ({what}).",
                          "resume with the original options and data, or start a new run folder.")
    notes = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items() if k not in ("checkpoint_every", "keep_checkpoints", "device")]
    if saved_data and data:
        for part in ("train", "val"):
            n0, n1 = saved_data.get(f"n_{part}"), data.get(f"n_{part}")
            if n0 != n1:
                notes.append(f"n_{part}: {n0} -> {n1}")
            elif saved_data.get(f"{part}_digest") != data.get(f"{part}_digest"):
                notes.append(f"{part} data: same size ({n1}), different content")
    if notes:
        warnings.warn("resuming with changed options (results will differ from an uninterrupted run): " + ", ".join(notes), stacklevel=3)
    return notes


def _legacy_state(st: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
    """The state.json of checkpoints written before the trainer had callbacks, in today's shape."""
    trainer = {k: st[k] for k in ("epoch", "batch", "step", "history", "epoch_losses", "skipped_steps", "micro_batch_size") if k in st}
    trainer["should_stop"] = st.get("stopped", False)
    callbacks = {"best_model": {"score": st.get("best_score"), "epoch": st.get("best_epoch", -1)},
                 "early_stopping": {"best": st.get("best_score"), "wait": st.get("bad_epochs", 0)}}
    if "best" in files:
        callbacks["best_model"]["tensors"] = {"best": files["best"]}
    return {"trainer": trainer, "callbacks": callbacks}


@register_callback("checkpointing")
class Checkpointing(Callback):
    # restore before every other callback starts; save after the logs of the step/epoch are written
    order = {"on_fit_start": 0, "default": 90}

    def __init__(self, run_dir: str | Path, interval: tuple[int, str] | None = None, keep: int = 2, resume: bool = False):
        self.run_dir, self.interval, self.keep, self.resume = Path(run_dir), interval, keep, resume
        self.fingerprint: dict[str, Any] | None = None
        self._saved: tuple[int, int, Path] | None = None  # (step, epoch, path) of the last write

    def on_fit_start(self, trainer) -> None:
        self.fingerprint = data_fingerprint(trainer.train_data, trainer.val_data)
        # room for the model and a checkpoint (weights, best weights, optimiser moments)
        copies = 1 + 4 * (self.keep if self.interval else 1)
        ensure_free_space(self.run_dir, copies * state_bytes(trainer.model) + (1 << 20), "the model and its checkpoints")
        if self.resume:
            self.restore(trainer)

    def on_step_end(self, trainer, loss: float) -> None:
        if self.interval and self.interval[1] == "step" and trainer.state.step % self.interval[0] == 0:
            self.save(trainer)

    def on_epoch_end(self, trainer, record: dict[str, Any]) -> None:
        if self.interval and self.interval[1] == "epoch" and trainer.state.epoch % self.interval[0] == 0:
            self.save(trainer)

    # ------------------------------------------------------------------ write / read
    def save(self, trainer) -> Path:
        """Write a checkpoint of the current state (once per position; only the main process writes)."""
        st = trainer.state
        if self._saved is not None and self._saved[:2] == (st.step, st.epoch):
            return self._saved[2]
        path = self.run_dir / "checkpoints" / f"step-{st.step:08d}"
        if trainer.runtime.is_main:
            states = trainer.callbacks.state_dict()
            files: dict[str, Any] = {}
            owners: dict[str, list[str]] = {}  # callback -> its tensor files
            for key, cb_state in states.items():
                for fname, tdict in (cb_state.pop("tensors", None) or {}).items():
                    if fname in files or fname == "model":
                        raise ValueError(f"callback {key!r}: tensor file name {fname!r} is taken")
                    files[fname] = tdict
                    owners.setdefault(key, []).append(fname)
            state = {"epoch": st.epoch, "batch": st.batch, "step": st.step,  # the position, at a glance
                     "trainer": st.state_dict(), "callbacks": states, "tensor_files": owners, "config": trainer.cfg.to_dict(),
                     "label_names": trainer.model.label_names, "backbone": trainer.model.backbone.name, "task": trainer.model.task,
                     "data": self.fingerprint, "world_size": trainer.runtime.world_size}
            tensors = {"optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
                       "generator": trainer.generator_state(), "rng": checkpoint.rng_state()}
            with storage_errors(self.run_dir / "checkpoints"):
                path = checkpoint.save(self.run_dir, st.step, trainer.model, tensors, state, files, keep=self.keep)
        trainer.runtime.wait()
        self._saved = (st.step, st.epoch, path)
        return path

    def restore(self, trainer) -> None:
        ck = checkpoint.load(self.run_dir)
        st = ck.state
        check_drift(st["config"], trainer.cfg, st["label_names"], trainer.model, st.get("data"), self.fingerprint)
        if "trainer" not in st:
            st = {**st, **_legacy_state(st, ck.files)}
        else:
            for key, names in st.get("tensor_files", {}).items():
                st["callbacks"].setdefault(key, {})["tensors"] = {f: ck.files[f] for f in names}
        device = trainer.runtime.device
        trainer.model.load_state_dict({k: v.to(device) for k, v in ck.model_state().items()})
        trainer.optimizer.load_state_dict(ck.tensors["optimizer"])
        trainer.scheduler.load_state_dict(ck.tensors["scheduler"])
        trainer.gen.set_state(ck.tensors["generator"])
        # the position and the logs; the sizes derived from this run's options stay this run's
        derived = ("total_steps", "steps_per_epoch", "batch_size", "score")
        batch_size = trainer.state.batch_size
        trainer.state.load_state_dict({k: v for k, v in st["trainer"].items() if k not in derived})
        trainer.state.micro_batch_size = min(batch_size, trainer.state.micro_batch_size or batch_size)
        trainer.callbacks.load_state_dict(st["callbacks"])
        checkpoint.set_rng_state(ck.tensors["rng"])  # last: nothing after this draws a random number before the first step
