"""Labelled data from a folder of images or audio files, a CSV/TSV/JSONL manifest of file paths or texts.

``load_data`` returns a ``TaskData``: inputs (image or audio paths, or texts), targets and label
names, with the task type. The modality of files follows their extensions (``modality_of``).
``split_data`` makes a stratified train/val/test split with a fixed seed.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .audio import AUDIO_EXTENSIONS
from .images import IMAGE_EXTENSIONS

TASKS = ("classification", "multilabel", "regression")
_PATH_COLUMNS = ("image", "audio", "path", "file", "filepath", "filename", "file_name")  # file_name: HF imagefolder metadata
_LABEL_COLUMNS = ("label", "labels", "category", "target", "class")
FILE_EXTENSIONS = IMAGE_EXTENSIONS | AUDIO_EXTENSIONS


PLURAL = {"image": "images", "text": "texts", "audio": "audio files"}


def modality_of(paths: Sequence[str], where: str = "the data") -> str:
    """``"audio"`` when the files with a known extension are audio files, ``"image"`` otherwise
    (files of other extensions do not count: they are reported as unusable samples); a mix of
    images and audio files is an error."""
    n_audio = sum(Path(p).suffix.lower() in AUDIO_EXTENSIONS for p in paths)
    n_image = sum(Path(p).suffix.lower() in IMAGE_EXTENSIONS for p in paths)
    if n_audio and n_image:
        raise DataError(f"{where} mixes {n_image} image files and {n_audio} audio files.", "keep one kind of input per data set.")
    return "audio" if n_audio else "image"
_TEXT_COLUMNS = ("text", "sentence", "review", "content")


@dataclass
class TaskData:
    inputs: list[str]
    targets: np.ndarray  # int64 [N] | float32 [N, C] (multilabel) | float32 [N] (regression)
    label_names: list[str]
    modality: str  # "image" | "text" | "audio"
    task: str = "classification"
    source: str = ""
    # None: not screened for unusable samples yet; a list: screened, and these inputs were left out
    skipped: list[str] | None = field(default=None, compare=False)
    # multi-task data (task "multitask"): one dict per label column (name, task, label_names);
    # ``targets`` is then float32 [N, columns] with NaN where a row has no label for a task
    tasks: list[dict] | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return 1 if self.task == "regression" else len(self.label_names)

    def subset(self, idx: Sequence[int]) -> "TaskData":
        """The examples at ``idx``; a part of screened data is screened (nothing more was left out of it)."""
        idx = np.asarray(idx, dtype=np.int64)
        skipped = [] if self.skipped is not None else None
        return TaskData([self.inputs[i] for i in idx], self.targets[idx], list(self.label_names), self.modality, self.task, self.source,
                        skipped, self.tasks)

    def content_digest(self) -> str:
        """Hash of the inputs' content (file bytes for images, the text itself) in order.

        Recomputed on every call, so a file changed on disk changes the digest."""
        from .._cache import inputs_digest

        return inputs_digest(self.inputs, self.modality)


#: the longest CSV/TSV field read (Python's csv module stops at 128 KiB by default)
CSV_FIELD_LIMIT = 16 << 20


def manifest_row(source: str, index: int) -> str:
    """How messages name example ``index`` of a manifest: ``data.csv row 7`` (rows counted as
    ``_load_manifest`` counts them: the header is row 1 of a CSV/TSV, a JSONL starts at row 1)."""
    return f"{source} row {index + (1 if Path(source).suffix.lower() == '.jsonl' else 2)}"


def is_manifest(source: str) -> bool:
    return Path(source).suffix.lower() in (".csv", ".tsv", ".tab", ".jsonl") and not Path(source).is_dir()


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dupes = [k for i, k in enumerate(keys) if k in keys[:i]]
    if dupes:
        raise _DuplicateKey(dupes[0])
    return dict(pairs)


class _DuplicateKey(ValueError):
    pass


def _read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV/TSV (first line: the header) or JSONL manifest, as dicts. A header naming
    a column twice, a JSON object with a key twice, a field over ``CSV_FIELD_LIMIT`` and text that
    is not UTF-8 are refused with the line they are on."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = []
            with open(path, encoding="utf-8-sig") as fh:
                for i, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            row = json.loads(line, object_pairs_hook=_no_duplicate_keys)
                        except json.JSONDecodeError as e:
                            raise DataError(f"{path}:{i} is not valid JSON ({e.msg}).", "fix or remove that line.") from None
                        except _DuplicateKey as e:
                            raise DataError(f"{path}:{i} has the key {e.args[0]!r} twice.", "keep one value per key.") from None
                        except RecursionError:
                            raise DataError(f"{path}:{i} is nested too deeply to be a manifest row.", "write one flat object per line.") from None
                        if not isinstance(row, dict):
                            raise DataError(f"{path}:{i} is not a JSON object.", 'write one object per line, e.g. {"text": "...", "label": "..."}.')
                        rows.append(row)
            return rows
        delimiter = "\t" if suffix in (".tsv", ".tab") else ","
        with open(path, encoding="utf-8-sig", newline="") as fh:  # -sig: Excel's UTF-8 CSV starts with a BOM
            reader = csv.DictReader(fh, delimiter=delimiter)
            before = csv.field_size_limit(CSV_FIELD_LIMIT)
            try:
                header = reader.fieldnames or []
                dupes = [c for i, c in enumerate(header) if c in header[:i]]
                if dupes:
                    raise DataError(f"{path} names the column {dupes[0]!r} twice in its header (columns: {', '.join(header)}).",
                                    "rename or remove one of them, so each column is read for one thing.")
                return list(reader)
            except csv.Error as e:
                where = f"{path} line {reader.line_num}"
                if "field larger than field limit" in str(e):
                    raise DataError(f"{where}: a field is longer than {CSV_FIELD_LIMIT >> 20} MiB (or a quote opened there is never closed).",
                                    "shorten that field, or close the quote.") from None
                raise DataError(f"{where} cannot be read as CSV ({e}).", "fix that line (quotes, NUL bytes) or remove it.") from None
            finally:
                csv.field_size_limit(before)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text.", "save the manifest as UTF-8 CSV, TSV or JSONL.") from None


def _targets(labels: list, task: str, label_sep: str, where: str, label_names: list[str] | None):
    if task == "regression":
        try:
            values = np.asarray([float(v) for v in labels], dtype=np.float32)
        except (TypeError, ValueError):
            raise DataError(f"{where}: regression labels must be numbers.", "use --task classification for categories.") from None
        if not np.isfinite(values).all():
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
            raise DataError(f"{where}: regression label {labels[bad]!r} (example {bad + 1}) is not a finite number.", "fix or remove that row.")
        return values, []
    if task == "multilabel":
        sets = [[s.strip() for s in str(v).split(label_sep) if s.strip()] if not isinstance(v, list) else [str(s) for s in v] for v in labels]
        names = label_names or sorted({s for row in sets for s in row})
        index = {n: i for i, n in enumerate(names)}
        y = np.zeros((len(sets), len(names)), dtype=np.float32)
        for r, row in enumerate(sets):
            for s in row:
                if s not in index:
                    raise DataError(f"{where}: label {s!r} is not one of the model's labels.", "use the same label names as training.")
                y[r, index[s]] = 1.0
        return y, names
    str_labels = [str(v) for v in labels]
    names = label_names or sorted(set(str_labels))
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(str_labels) - set(index))
    if unknown:
        raise DataError(f"{where}: labels {unknown[:3]} are not among the training labels.", "use the same label names as training.")
    return np.asarray([index[s] for s in str_labels], dtype=np.int64), names


def load_data(
    path: str | Path,
    *,
    label_column: str | None = None,
    text_column: str | None = None,
    path_column: str | None = None,
    task: str = "classification",
    label_sep: str = "|",
    label_names: list[str] | None = None,
    min_classes: int = 2,
    keep_bad_samples: bool = False,
    tasks: str | dict[str, str] | None = None,
) -> TaskData:
    """Load labelled data.

    - a folder with one subfolder of images per class;
    - a CSV/TSV/JSONL manifest with a path column (images, relative to the manifest) or a text column,
      and a label column (default ``label``).
    ``label_names`` fixes the label order (used when evaluating a saved model on new data).
    ``keep_bad_samples``: keep missing image paths, empty texts and non-image files in class folders
    as inputs instead of raising, for ``transferkit.data.validate`` to report or leave them out.
    """
    if tasks:  # several label columns: multi-task data (see transferkit.multitask)
        from ..multitask import load_multitask

        return load_multitask(path, tasks, text_column=text_column, path_column=path_column)
    if task not in TASKS:
        raise ConfigError(f"Unknown task {task!r}.", f"use --task one of {', '.join(TASKS)}.")
    from .formats import is_table_source, load_table

    if is_table_source(path):  # Parquet/Arrow, Hugging Face datasets folders, DataFrames, (input, label) pairs
        data = load_table(path, label_column, text_column, path_column, task, label_sep, label_names, keep_bad_samples)
        path = data.source
    elif not Path(path).exists():
        raise DataError(f"Data path {path} does not exist.", "pass an image folder or a CSV/TSV/JSONL file.")
    elif Path(path).is_dir():
        data = _load_folder(Path(path), label_names, keep_bad_samples)
    else:
        data = _load_manifest(Path(path), label_column, text_column, path_column, task, label_sep, label_names, keep_bad_samples)
    if len(data) == 0:
        raise DataError(f"No examples found in {path}.", "add data, one subfolder of images per class or one row per example.")
    if data.task != "regression" and label_names is None:
        present = len(set(data.targets.tolist())) if data.task == "classification" else int((data.targets.sum(0) > 0).sum())
        if present < min_classes:
            raise DataError(
                f"{path} has only {present} class ({', '.join(data.label_names)}); classification needs at least {min_classes}.",
                "add examples of other classes.",
            )
    return data


def _load_folder(path: Path, label_names: list[str] | None, keep_bad: bool = False) -> TaskData:
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = [p for p in path.iterdir() if p.suffix.lower() in FILE_EXTENSIONS]
        hint = "put the files in one subfolder per class (e.g. data/cat/1.jpg, data/dog/2.jpg; data/yes/1.wav)."
        what = "audio files" if loose and modality_of([str(p) for p in loose]) == "audio" else "images"
        raise DataError(f"Folder {path} has no class subfolders" + (f" ({len(loose)} loose {what})." if loose else "."), hint)
    inputs, labels = [], []
    for c in classes:
        for f in sorted((path / c).rglob("*")):
            if f.is_file() and not f.name.startswith("."):
                inputs.append(str(f))
                labels.append(c)
    modality = modality_of(inputs, f"Folder {path}")
    if not keep_bad:
        known = AUDIO_EXTENSIONS if modality == "audio" else IMAGE_EXTENSIONS
        other = next((f for f in inputs if Path(f).suffix.lower() not in known), None)
        if other is not None:
            suffix = Path(other).suffix
            if modality == "audio":
                raise DataError(f"{other} is not an audio file (extension {suffix or 'none'}).", "remove it or convert it to WAV/FLAC.")
            raise DataError(f"{other} is not an image file (extension {suffix or 'none'}).", "remove it or convert it to PNG/JPEG.")
    targets, names = _targets(labels, "classification", "|", str(path), label_names)
    return TaskData(inputs, targets, names, modality, "classification", str(path))


def warn_empty_class_folders(data: TaskData) -> None:
    """One warning line when class subfolders of an image folder hold no file: training data leaves
    those classes out (the model will not know them)."""
    folder = Path(data.source) if data.modality in ("image", "audio") and data.source else None
    if folder is None or not folder.is_dir():
        return
    empty = [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".") and p.name not in data.label_names]
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        warnings.warn(f"class folder {empty[0]}{more} is empty and is left out; add images to it or remove it.", stacklevel=3)


def _load_manifest(path, label_column, text_column, path_column, task, label_sep, label_names, keep_bad=False, unlabelled=False,
                   rows: list[dict] | None = None, first_row: int | None = None) -> TaskData:
    """``rows``: already read (``formats.load_table``: tables, numbered from ``first_row``)."""
    if rows is None and path.suffix.lower() not in (".csv", ".tsv", ".tab", ".jsonl"):
        raise DataError(f"{path} is neither a folder nor a .csv/.tsv/.jsonl manifest.", "pass an image folder or a manifest file.")
    rows = _read_rows(path) if rows is None else rows
    if not rows:
        raise DataError(f"Manifest {path} has no rows.", "add one row per example.")
    columns = list(rows[0].keys())

    def pick(given: str | None, defaults: tuple[str, ...], option: str) -> str | None:
        if given is not None:
            if given not in columns:
                raise DataError(f"{path} has no column {given!r} (columns: {', '.join(columns)}).", f"pass {option} with one of those names.")
            return given
        return next((c for c in defaults if c in columns), None)

    label_col = pick(label_column, _LABEL_COLUMNS, "--label-column")
    if label_col is None and not unlabelled:
        raise DataError(f"{path} has no label column (columns: {', '.join(columns)}).", "pass --label-column NAME.")
    pcol = pick(path_column, _PATH_COLUMNS, "--path-column") if text_column is None else None
    tcol = pick(text_column, _TEXT_COLUMNS, "--text-column") if pcol is None else None
    if pcol is None and tcol is None:
        raise DataError(f"{path} has no image-path or text column (columns: {', '.join(columns)}).", "pass --path-column or --text-column.")
    inputs, labels = [], []
    for i, row in enumerate(rows, first_row if first_row is not None else 2 if path.suffix.lower() != ".jsonl" else 1):
        label = row.get(label_col) if not unlabelled else "?"
        if task == "multilabel" and label is not None and not str(label).strip():
            label = ""  # a multilabel row may carry none of the labels
        elif label is None or (isinstance(label, str) and not label.strip()):
            raise DataError(f"{path} row {i}: empty value in label column {label_col!r}.", "fill it in or remove the row.")
        if pcol:
            value = row.get(pcol)
            if not value and not keep_bad:
                raise DataError(f"{path} row {i}: empty value in column {pcol!r}.", "fill it in or remove the row.")
            p = Path(str(value)) if value else None  # kept as "": reported as a missing file
            p = p if p is None or p.is_absolute() else path.parent / p
            if p is not None and not p.is_file() and not keep_bad:
                what = "audio file" if p.suffix.lower() in AUDIO_EXTENSIONS else "image"
                raise DataError(f"{path} row {i}: {what} {p} does not exist.", f"fix the path in column {pcol!r} (relative paths start at the manifest's folder).")
            inputs.append(str(p) if p is not None else "")
        else:
            text = row.get(tcol)
            if (text is None or not str(text).strip()) and not keep_bad:
                raise DataError(f"{path} row {i}: empty text in column {tcol!r}.", "fill it in or remove the row.")
            inputs.append("" if text is None else str(text))
        labels.append(label)
    modality = modality_of(inputs, f"{path} column {pcol!r}") if pcol else "text"
    if unlabelled:
        # the label column's values are not read: only its set of names, for a schema check
        names = sorted({str(r.get(label_col)) for r in rows if r.get(label_col) not in (None, "")}) if label_col else []
        return TaskData(inputs, np.full(len(inputs), -1, dtype=np.int64), names, modality, task, str(path))
    targets, names = _targets(labels, task, label_sep, f"{path} column {label_col!r}", label_names)
    return TaskData(inputs, targets, names, modality, task, str(path))


def load_unlabelled(path: str | Path, *, text_column: str | None = None, path_column: str | None = None, label_column: str | None = None,
                    keep_bad_samples: bool = False) -> TaskData:
    """Inputs without labels (e.g. a target domain): a folder of images or audio files (class
    subfolders or not), a manifest or table with or without a label column, or a .txt file of texts.
    Targets are all -1; a label column or class subfolders only give ``label_names`` (to check the
    label set), never targets. ``keep_bad_samples``: keep a manifest's missing paths and empty texts, for screening."""
    from .formats import is_table_source, load_table

    if is_table_source(path):  # tables and Hugging Face datasets folders (see formats.py)
        data = load_table(path, label_column, text_column, path_column, "classification", "|", None, keep_bad_samples, unlabelled=True)
        path = data.source
    elif not Path(path).exists():
        raise DataError(f"Data path {path} does not exist.", "pass an image folder, a CSV/TSV/JSONL manifest or a .txt file.")
    elif (path := Path(path)).is_dir():
        classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        inputs, kind = load_inputs([str(path)])
        data = TaskData(inputs, np.full(len(inputs), -1, dtype=np.int64), classes, kind, source=str(path))
    elif path.suffix.lower() == ".txt":
        inputs, _ = load_inputs([str(path)])
        data = TaskData(inputs, np.full(len(inputs), -1, dtype=np.int64), [], "text", source=str(path))
    else:
        data = _load_manifest(path, label_column, text_column, path_column, "classification", "|", None, keep_bad_samples, unlabelled=True)
    if len(data) == 0:
        raise DataError(f"No examples found in {path}.", "add images or rows.")
    return data


def _path_kind(item: str) -> str:
    """'dir', 'file', or '' when ``item`` is no existing path (a raw text: too long, odd characters...)."""
    try:
        p = Path(item)
        return "dir" if p.is_dir() else "file" if p.is_file() else ""
    except (OSError, ValueError):  # e.g. a text longer than a file name may be, or with a NUL byte
        return ""


def load_inputs(items: Sequence[str]) -> tuple[list[str], str]:
    """Expand CLI inputs for prediction: image or audio files, folders of them, a .txt file of lines, raw texts,
    or the inputs of a table (a CSV/TSV/JSONL manifest, Parquet/Arrow, a Hugging Face datasets folder;
    a label column, if any, is not read)."""
    from .formats import is_table_source

    out: list[str] = []
    kinds = set()
    for item in items:
        p = Path(item)
        kind = _path_kind(item)
        if is_table_source(item) or (kind == "file" and p.suffix.lower() in (".csv", ".tsv", ".tab", ".jsonl")):
            table = load_unlabelled(item)
            out += table.inputs
            kinds.add(table.modality)
        elif kind == "dir":
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in FILE_EXTENSIONS)
            if not files:
                raise DataError(f"Folder {p} contains no images or audio files.", "pass image or audio files, or a folder of them.")
            out += [str(f) for f in files]
            kinds.add(modality_of([str(f) for f in files], f"Folder {p}"))
        elif kind == "file" and p.suffix.lower() in FILE_EXTENSIONS:
            out.append(str(p))
            kinds.add(modality_of([str(p)]))
        elif kind == "file" and p.suffix.lower() in (".txt",):
            try:
                lines = [ln.strip() for ln in p.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
            except UnicodeDecodeError:
                raise DataError(f"{p} is not UTF-8 text.", "save it as UTF-8, one input per line.") from None
            if not lines:
                raise DataError(f"{p} has no non-empty lines.", "write one text per line.")
            out += lines
            kinds.add("text")
        elif not kind and "\n" not in item and Path(item.strip()).suffix.lower() in FILE_EXTENSIONS | {".txt"}:
            raise DataError(f"File {item} does not exist.", "check the path (a text to predict must not end in a file extension).")
        else:
            out.append(item)
            kinds.add("text")
    if len(kinds) > 1:
        names = " and ".join(PLURAL[k] for k in sorted(kinds))
        raise DataError(f"Inputs mix {names}.", f"predict {names} in separate calls.")
    return out, (kinds.pop() if kinds else "text")


def split_data(data: TaskData, val: float = 0.15, test: float = 0.15, seed: int = 0) -> tuple[TaskData, TaskData, TaskData]:
    """Stratified (per class, for single-label classification) train/val/test split with a fixed seed."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ConfigError(f"Invalid split fractions val={val}, test={test}.", "use fractions whose sum is below 1.")
    rng = np.random.default_rng(seed)
    n = len(data)
    if data.task == "classification":
        strata = [np.flatnonzero(data.targets == c) for c in range(len(data.label_names))]
    else:
        strata = [np.arange(n)]
    tr, va, te = [], [], []
    for idx in strata:
        idx = rng.permutation(idx)
        k = len(idx)
        n_te = int(round(k * test))
        n_va = int(round(k * val))
        if k - n_te - n_va < 1:  # keep at least one training example per class
            n_te, n_va = max(0, min(n_te, k - 1)), max(0, min(n_va, k - 1 - min(n_te, k - 1)))
        te += idx[:n_te].tolist()
        va += idx[n_te : n_te + n_va].tolist()
        tr += idx[n_te + n_va :].tolist()
    return data.subset(sorted(tr)), data.subset(sorted(va)), data.subset(sorted(te))
