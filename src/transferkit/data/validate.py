"""Find every problem in labelled data before training, and leave out unusable samples.

``validate_data`` checks train/val/test sets and returns a ``Report`` listing all problems, not
only the first: unusable samples (missing, empty, truncated or unreadable images and audio files,
text files named like images or audio, silent or too short audio, empty texts), classes of val/test that training never sees, classes without a usable
training example, and duplicates across splits (errors: they leak into evaluation) or within a
split (warnings). ``screen`` applies ``FitConfig.on_bad_sample`` before any training work.
"""

from __future__ import annotations

import hashlib
import os
import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .dataset import TaskData
from .images import IMAGE_EXTENSIONS, ImageReadError, open_rgb

SPLITS = ("train", "val", "test")
# problems of one sample that make it unusable (``Report.bad_indices``, ``screen``)
SAMPLE_KINDS = ("missing_file", "empty_file", "not_an_image", "not_audio", "truncated", "too_large", "unreadable", "silent",
                "too_short", "empty_text")


@dataclass
class Problem:
    """One problem: ``index`` is the example's position in its split (None for a whole class)."""

    kind: str
    split: str
    index: int | None
    path_or_text: str  # shortened: a path keeps its end (the file name), a text its beginning
    message: str
    severity: str = "error"  # "error" | "warning"


@dataclass
class Report:
    """All problems found in the data; ``sizes`` is the number of examples per split checked."""

    problems: list[Problem] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return not self.errors

    def bad_indices(self, split: str) -> list[int]:
        """Sorted indices of the unusable samples of ``split`` (those ``--on-bad-sample skip`` leaves out)."""
        return sorted({p.index for p in self.problems if p.split == split and p.kind in SAMPLE_KINDS and p.index is not None})

    def summary(self) -> str:
        def count(n: int, word: str) -> str:
            return f"{n} {word}{'' if n == 1 else 's'}"

        sizes = ", ".join(f"{n} {split}" for split, n in self.sizes.items())
        return f"{count(len(self.errors), 'error')}, {count(len(self.warnings), 'warning')} in {sizes} examples."

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "errors": len(self.errors), "warnings": len(self.warnings), "sizes": dict(self.sizes),
                "problems": [asdict(p) for p in self.problems]}


def shorten(item: str, modality: str, width: int = 60) -> str:
    """A long path keeps its end (the file name), a long text its beginning; one line."""
    item = " ".join(item.split()) if modality == "text" else item
    if len(item) <= width:
        return item
    return "…" + item[-(width - 1):] if modality != "text" else item[: width - 1] + "…"


def check_sample(item: str, modality: str, raw: bytes | None = None) -> tuple[str, str] | None:
    """``(kind, message)`` when the sample is unusable, else None. An image is fully decoded once
    (``raw``: its bytes, when already read)."""
    if modality == "text":
        return ("empty_text", "empty text") if not item.strip() else None
    if modality == "audio":
        return _check_audio(item)
    if not item:
        return "missing_file", "empty image path"
    suffix = Path(item).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        return "not_an_image", f"{item} is not an image file (extension {suffix or 'none'})."
    try:
        open_rgb(item, data=raw)
    except ImageReadError as e:
        return e.kind, e.message
    except DataError as e:
        return "unreadable", e.message
    return None


def _check_audio(path: str) -> tuple[str, str] | None:
    """``(kind, message)`` when an audio file is unusable (decoded in full, at its own rate), else None."""
    from .audio import AUDIO_EXTENSIONS, AudioReadError, read_audio

    if not path:
        return "missing_file", "empty audio path"
    suffix = Path(path).suffix.lower()
    if suffix not in AUDIO_EXTENSIONS:
        return "not_audio", f"{path} is not an audio file (extension {suffix or 'none'})."
    try:
        read_audio(path)
    except AudioReadError as e:
        return e.kind, e.message
    return None


def _check_file(path: str, modality: str = "image") -> tuple[tuple[str, str] | None, str | None]:
    """The problem of one image or audio file (or None) and the hash of its bytes (None when unusable)."""
    if modality == "audio":
        problem = check_sample(path, "audio")
        if problem is not None:
            return problem, None
        with open(path, "rb") as fh:
            return None, hashlib.sha256(fh.read()).hexdigest()
    if not path or Path(path).suffix.lower() not in IMAGE_EXTENSIONS:
        return check_sample(path, "image"), None
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return ("missing_file", f"Image file {path} does not exist."), None
    except OSError as e:
        return ("unreadable", f"Cannot read image {path} ({type(e).__name__}: {e})."), None
    problem = check_sample(path, "image", raw)
    return problem, (hashlib.sha256(raw).hexdigest() if problem is None else None)


def find_bad_samples(data: TaskData, split: str = "train", first_only: bool = False) -> list[Problem]:
    """Unusable samples of ``data`` (all of them, or only the first). Images are checked on a thread
    pool (decoding releases the GIL), in order."""
    from concurrent.futures import ThreadPoolExecutor

    found = []
    check = lambda x: check_sample(x, data.modality)  # noqa: E731
    # texts are checked in a moment: a pool would only add its overhead
    pool = ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="transferkit-check") if data.modality != "text" else None
    try:
        for i, (x, problem) in enumerate(zip(data.inputs, pool.map(check, data.inputs) if pool else map(check, data.inputs))):
            if problem is not None:
                found.append(Problem(problem[0], split, i, shorten(x, data.modality), problem[1]))
                if first_only:
                    break
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return found


def _screened_marker(data: TaskData) -> Path | None:
    """Cache marker for image or audio data whose every file was decoded fine: keyed by the files'
    content, so later runs on the same files skip decoding them all again (a changed file changes the key)."""
    if data.modality == "text" or not len(data):
        return None
    from .._cache import cache_dir

    try:
        digest = data.content_digest()
    except OSError:  # a missing or unreadable file: no marker, screening reports it
        return None
    return cache_dir("screened") / f"v1-{digest[:40]}"


def _present(data: TaskData, rows: np.ndarray | None = None) -> dict[str, int]:
    """Examples per class name (among ``rows`` when given); empty for regression."""
    if data.task == "regression":
        return {}
    y = data.targets if rows is None else data.targets[rows]
    counts = np.bincount(y, minlength=len(data.label_names)) if data.task == "classification" else y.sum(0)
    return {name: int(c) for name, c in zip(data.label_names, counts)}


def validate_data(train: TaskData, val: TaskData | None = None, test: TaskData | None = None) -> Report:
    """Check every example and the label sets of train/val/test; returns all problems found."""
    parts = {name: d for name, d in zip(SPLITS, (train, val, test)) if d is not None}
    report = Report(sizes={name: len(d) for name, d in parts.items()})
    first_seen: dict[str, tuple[str, int]] = {}  # content key -> (split, index) of its first occurrence
    for split, data in parts.items():
        for i, x in enumerate(data.inputs):
            if data.modality != "text":
                problem, key = _check_file(x, data.modality)
            else:
                problem = check_sample(x, "text")
                key = None if problem else "text:" + " ".join(x.split())
            shown = shorten(x, data.modality)
            if problem is not None:
                report.problems.append(Problem(problem[0], split, i, shown, problem[1]))
            if key is None:
                continue
            if key not in first_seen:
                first_seen[key] = (split, i)
                continue
            s0, i0 = first_seen[key]
            other = shorten(parts[s0].inputs[i0], data.modality)
            what = f"{data.modality} bytes" if data.modality != "text" else "text"
            if s0 == split:
                report.problems.append(Problem("duplicate", split, i, shown, f"same {what} as {split} example {i0} ({other}).", "warning"))
            else:
                report.problems.append(Problem("duplicate_across_splits", split, i, shown,
                                               f"same {what} as {s0} example {i0} ({other}): it leaks into evaluation."))
    _check_classes(report, parts)
    return report


def _check_classes(report: Report, parts: dict[str, TaskData]) -> None:
    """Classes of val/test absent from train, and classes without a usable training example."""
    train = parts["train"]
    if train.task == "regression":
        return
    in_train = {name for name, n in _present(train).items() if n}
    for split, data in parts.items():
        if split == "train" or data.task == "regression":
            continue
        for name, n in _present(data).items():
            if n and name not in in_train:
                report.problems.append(Problem("unknown_class", split, None, name,
                                               f"class {name!r} has {n} example{'s' if n > 1 else ''} in {split} but none in train."))
    bad = report.bad_indices("train")
    good_rows = np.setdiff1d(np.arange(len(train)), np.asarray(bad, dtype=np.int64))
    good = _present(train, good_rows)
    all_counts = _present(train)
    folder = Path(train.source) if train.modality != "text" and train.source else None
    if folder is not None and folder.is_dir():  # an empty class subfolder is a class with no example
        for sub in sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            good.setdefault(sub, 0)
    for name, n in good.items():
        if n == 0:
            total = all_counts.get(name, 0)
            why = f"all {total} are unusable" if total else f"empty folder {folder / name}" if folder is not None else "none at all"
            report.problems.append(Problem("class_without_train_examples", "train", None, name,
                                           f"class {name!r} has no usable training example ({why})."))


def validate_command(train_source: str, val_source: str | None = None, test_source: str | None = None) -> str:
    """The ``transferkit validate`` command line for these data sources."""
    cmd = f"transferkit validate {train_source or 'DATA'}"
    cmd += f" --val-data {val_source}" if val_source else ""
    return cmd + (f" --test-data {test_source}" if test_source else "")


def screen(data: TaskData, split: str, on_bad_sample: str = "error", max_bad_fraction: float = 0.05,
           command: str | None = None) -> TaskData:
    """Apply ``--on-bad-sample`` to ``data`` before training: raise ``DataError`` at the first
    unusable sample ("error"), or return the usable ones ("skip"; ``skipped`` lists the rest),
    raising when more than ``max_bad_fraction`` of ``data`` is unusable. Screened data is returned as is."""
    if data.skipped is not None:
        return data
    marker = _screened_marker(data)
    if marker is not None and marker.is_file():
        return _screened(data)  # these very files were all usable before
    command = command or validate_command(data.source)
    if on_bad_sample == "error":
        found = find_bad_samples(data, split, first_only=True)
        if found:
            p = found[0]
            where = _where(data, split, p.index)
            also = "" if split == "train" else f" (in the {split} data)"
            raise DataError(f"{where}{p.message.rstrip('.')}{also}.",
                            f"run '{command}' to list every problem, then fix or remove the file, "
                            "or pass --on-bad-sample skip to leave unusable samples out.")
        _mark(marker)
        return _screened(data)
    found = find_bad_samples(data, split)
    if not found:
        _mark(marker)
    if len(data) and len(found) / len(data) > max_bad_fraction:
        raise DataError(
            f"{len(found)} of {len(data)} examples in {data.source or f'the {split} data'} ({len(found) / len(data):.1%}) "
            f"are unusable, more than --max-bad-fraction {max_bad_fraction:g}.",
            f"run '{command}' to list them and fix the data, or raise --max-bad-fraction.",
        )
    bad = {p.index for p in found}
    clean = data.subset([i for i in range(len(data)) if i not in bad])
    if split == "train":
        before, after = _present(data), _present(clean)
        lost = [name for name, n in before.items() if n and not after[name]]
        if lost:
            raise DataError(f"After leaving out {len(bad)} unusable samples, class {lost[0]!r} has no training example left.",
                            f"run '{command}' to list them and fix the data.")
    clean.skipped = [data.inputs[i] if data.modality != "text" and data.inputs[i] else
                     f"{_where(data, split, i)[:-2]} ({'empty text' if data.modality == 'text' else f'empty {data.modality} path'})"
                     for i in sorted(bad)]
    return clean


def _screened(data: TaskData) -> TaskData:
    """A shallow copy of ``data`` marked as screened with nothing left out (the caller's TaskData is
    left as it is; a copy, not ``dataclasses.replace``, so that no field is read: a target set's
    labels may be hidden)."""
    out = copy.copy(data)
    out.skipped = []
    return out


def _where(data: TaskData, split: str, index: int) -> str:
    """``"data.csv row 7: "`` for a manifest's example, ``"val example 3: "`` for texts from elsewhere,
    ``""`` for image and audio files of a folder (their path says where they are)."""
    from .dataset import is_manifest, manifest_row

    if data.source and is_manifest(data.source):
        return f"{manifest_row(data.source, index)}: "
    return "" if data.modality in ("image", "audio") else f"{data.source or split} example {index + 1}: "


def _mark(marker: Path | None) -> None:
    """Remember that these files were all usable (an empty file: nothing in it to damage)."""
    if marker is not None:
        from .._cache import write_failed
        from .._io import atomic_write_bytes

        try:
            atomic_write_bytes(marker, b"")
        except OSError as e:  # disk full: the next run screens again
            write_failed(marker, e)
