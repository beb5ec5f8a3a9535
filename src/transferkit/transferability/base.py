"""Transferability scores: registry, input checks and ``compute_scores``.

A transferability score estimates, without fine-tuning, how well a pretrained
model's features (or its source-class predictions) suit a labelled target task.
Every score here is "higher is better" and returns a Python float.

Labels may be any 1-D sequence (ints, strings, a tensor). They are mapped to
``0..C-1`` with ``np.unique(..., return_inverse=True)``, so no score depends on
the label names.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import DataError
from ..registry import Registry


@dataclass(frozen=True)
class ScoreSpec:
    name: str
    fn: Callable[..., float]
    needs: str  # "features" or "source_probs"
    description: str


SCORES: Registry[ScoreSpec] = Registry("transferability score")

_NEEDS = ("features", "source_probs")


def register_score(name: str, needs: str, description: str):
    """Decorator: register ``fn(x, labels, ...) -> float`` as score ``name``."""
    if needs not in _NEEDS:
        raise ValueError(f"needs must be one of {_NEEDS}, got {needs!r}")

    def deco(fn):
        SCORES.register(name, ScoreSpec(name=name, fn=fn, needs=needs, description=description))
        return fn

    return deco


def _to_numpy(x: Any, what: str, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu()
        if dtype is not None and x.is_floating_point():
            x = x.double()
        x = x.numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise DataError(
            f"{what} cannot be converted to a numeric array ({err}).",
            f"pass {what} as a numpy array or torch tensor of numbers.",
        ) from None


def _check_matrix(x: Any, what: str) -> np.ndarray:
    arr = _to_numpy(x, what, dtype=np.float64)
    if arr.ndim != 2:
        raise DataError(
            f"{what} must be 2-D [samples, dims], got shape {arr.shape}.",
            f"reshape {what} to one row per sample (e.g. x.reshape(len(x), -1)).",
        )
    if arr.shape[0] == 0:
        raise DataError(f"{what} has zero rows.", "pass at least one sample per class.")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise DataError(
            f"{what} contain NaN or inf in {int(bad.sum())} of {arr.shape[0]} rows.",
            f"drop or repair those rows (e.g. keep np.isfinite({what}).all(axis=1)).",
        )
    return arr


def _encode_labels(labels: Any, n: int, what: str) -> tuple[np.ndarray, int]:
    lab = _to_numpy(labels, "labels")
    if lab.ndim != 1:
        raise DataError(
            f"labels must be 1-D (one label per sample), got shape {lab.shape}.",
            "pass one class label per row (for one-hot labels use labels.argmax(1)).",
        )
    if len(lab) != n:
        raise DataError(
            f"{what} have {n} rows but labels have {len(lab)} entries.",
            f"pass exactly one label per row of {what}.",
        )
    if lab.dtype.kind == "f" and np.isnan(lab).any():
        raise DataError(f"labels contain {int(np.isnan(lab).sum())} NaN values.", "drop the unlabelled samples.")
    try:
        classes, codes = np.unique(lab, return_inverse=True)
    except TypeError:
        raise DataError("labels mix types that cannot be compared (e.g. str and int).",
                        "use one type for all labels.") from None
    c = len(classes)
    if c < 2:
        raise DataError(
            f"needs at least 2 classes, got {c} ({classes[0]!r}).",
            "a transferability score compares classes: pass labels with 2 or more classes.",
        )
    if n <= c:
        # After np.unique every class has >= 1 sample; with n == c no class has two.
        raise DataError(
            f"{n} samples for {c} classes: needs more samples than classes.",
            "pass several labelled samples per class (at least 2 for most classes).",
        )
    return codes.reshape(-1).astype(np.int64), c


def check_inputs(features: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate and convert: ``features`` -> float64 [N, D], ``labels`` -> int codes [N], C.

    Raises :class:`DataError` for: features not 2-D, zero rows, NaN/inf rows, a
    length mismatch, fewer than 2 classes, or no more samples than classes.
    Classes with a single sample are allowed.
    """
    f = _check_matrix(features, "features")
    y, c = _encode_labels(labels, f.shape[0], "features")
    return f, y, c


def check_source_probs(source_probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """As :func:`check_inputs` for source-model class probabilities [N, Z] (rows sum to 1).

    Rows must be non-negative and sum to 1 within 1e-3; they are renormalised exactly.
    """
    p = _check_matrix(source_probs, "source_probs")
    if (p < 0).any():
        raise DataError(
            f"source_probs has {int((p < 0).any(axis=1).sum())} rows with negative entries.",
            "pass probabilities (softmax of the source logits), not logits.",
        )
    sums = p.sum(axis=1)
    off = np.abs(sums - 1.0) > 1e-3
    if off.any():
        raise DataError(
            f"source_probs rows must sum to 1, but {int(off.sum())} of {len(p)} rows do not "
            f"(e.g. {float(sums[off][0]):.4g}).",
            "apply softmax to the source logits (torch.softmax(logits, dim=1)).",
        )
    y, c = _encode_labels(labels, p.shape[0], "source_probs")
    return p / sums[:, None], y, c


def compute_scores(
    features: Any,
    labels: Any,
    *,
    source_probs: Any = None,
    names: Iterable[str] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Run the registered scores (all, or ``names``) and return ``{name: value}``.

    Scores that need ``source_probs`` are omitted when it is None. Unknown names
    raise :class:`ConfigError`. ``seed`` goes to the scores that take one.
    """
    specs = [SCORES.get(n) for n in (SCORES.names() if names is None else list(names))]
    check_inputs(features, labels)
    if source_probs is not None:
        check_source_probs(source_probs, labels)
    out: dict[str, float] = {}
    for spec in specs:
        if spec.needs == "source_probs":
            if source_probs is None:
                continue
            x = source_probs
        else:
            x = features
        kwargs = {"seed": seed} if "seed" in inspect.signature(spec.fn).parameters else {}
        out[spec.name] = float(spec.fn(x, labels, **kwargs))
    return out
