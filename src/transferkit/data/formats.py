"""The data formats users already have: Parquet and Arrow files, Hugging Face ``datasets`` folders,
pandas DataFrames and lists of (input, label) pairs.

Each source is read into rows of one input column and one label column, then goes through the
manifests' own code (``dataset._load_manifest``): the same label handling, checks and one-line
errors as a CSV. Rows of tables are numbered from 0, as in pandas and ``datasets``.

- Parquet (``.parquet``/``.pq``) and Arrow IPC (``.arrow``/``.feather``/``.ipc``, file or stream
  format) are read with pyarrow alone; the Hugging Face features stored in the schema metadata
  (``huggingface``) are used when present.
- A ``Dataset.save_to_disk`` folder (``state.json`` + ``dataset_info.json`` + ``data-*.arrow``
  shards, Arrow stream format) is read with pyarrow too: the shards in ``state.json``'s order and
  the features of ``dataset_info.json``, as ``datasets.load_from_disk`` does (``save_to_disk``
  writes the rows themselves, with any ``select``/``shuffle`` applied, and embeds image files).
- A ``DatasetDict`` folder (``dataset_dict.json``) is a set of splits: ``train`` trains,
  ``validation``/``valid``/``val``/``dev`` validates and ``test``/``testing``/``eval``/``evaluation``
  tests (the split names of ``datasets``' own data-file patterns; ``dataset_splits``). A split
  folder (``DIR/test``) is a data set of its own.
- The ``imagefolder`` convention: a folder with ``metadata.csv``/``.jsonl``/``.parquet`` whose
  ``file_name`` column names each image relative to the folder; the folder may instead hold split
  subfolders (``train/``, ``test/``...), each with its own metadata file.
- Image columns: paths (relative to the file's folder; a DataFrame's to the working directory),
  ``{"bytes": ..., "path": ...}`` structs (the ``datasets`` ``Image`` feature), raw bytes, or PIL
  images (saved as PNG). Bytes are written once into a content-addressed folder of the cache
  (``$TRANSFERKIT_CACHE/blobs/<sha256 prefix>/<name>``), so that every later stage (screening, the
  decode-once image store, the features cache, duplicate checks) sees an ordinary image file
  keyed by its content. Undecodable bytes are then a bad sample like a bad file.
- Label columns: ``ClassLabel`` integers become their names, in the ``ClassLabel``'s order (names
  with no example left out); -1 (``datasets``' "no label") is an empty label. A pandas
  ``Categorical`` (or an Arrow dictionary column) keeps its categories' order the same way; other
  labels are sorted by name, as in a CSV.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import DataError
from .images import IMAGE_EXTENSIONS

TABLE_SUFFIXES = (".parquet", ".pq", ".arrow", ".feather", ".ipc")
METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
SPLIT_NAMES = {  # the split keywords of datasets' data-file patterns
    "train": ("train", "training"),
    "val": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
_BATCH = 512  # rows of an image column turned into Python objects at a time


# ---------------------------------------------------------------- what a source is


def _kind(src: Any) -> str | None:
    """'dataframe' | 'arrow' (a pyarrow Table) | 'hf' (a datasets.Dataset) | 'hfdict' (a DatasetDict)
    | 'pairs' | 'file' (Parquet/Arrow) | 'disk' (save_to_disk folder) | 'diskdict' (DatasetDict folder)
    | 'imagefolder' (metadata file) | 'splitfolder' (split subfolders with metadata) | None."""
    if isinstance(src, (str, os.PathLike)):
        try:
            p = Path(src)
            if p.suffix.lower() in TABLE_SUFFIXES and not p.is_dir():
                return "file"
            if not p.is_dir():
                return None
        except (OSError, ValueError):  # a long text, not a path
            return None
        if (p / "dataset_dict.json").is_file():
            return "diskdict"
        if (p / "state.json").is_file() and (p / "dataset_info.json").is_file():
            return "disk"
        if _metadata_file(p) is not None:
            return "imagefolder"
        if _split_folders(p):
            return "splitfolder"
        return None
    module = type(src).__module__.split(".")[0]
    if module == "pandas" and hasattr(src, "columns") and hasattr(src, "iloc"):
        return "dataframe"
    if module == "pyarrow" and hasattr(src, "schema") and hasattr(src, "column_names"):
        return "arrow"
    if module == "datasets" and hasattr(src, "features"):
        return "hf"
    if module == "datasets" and isinstance(src, dict):
        return "hfdict"
    if isinstance(src, (list, tuple)):
        return "pairs"
    return None


def is_table_source(src: Any) -> bool:
    """True for the sources this module reads (``load_data`` hands them here)."""
    return _kind(src) is not None


def _metadata_file(folder: Path) -> Path | None:
    return next((folder / m for m in METADATA_FILES if (folder / m).is_file()), None)


def _split_folders(folder: Path) -> dict[str, Path]:
    """Split subfolders (train/, test/...) that each hold a metadata file: the imagefolder layout with splits."""
    found = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        split = next((s for s, names in SPLIT_NAMES.items() if sub.name.lower() in names), None)
        if split is not None and split not in found and _metadata_file(sub) is not None:
            found[split] = sub
    return found


def _named_splits(names: list[str]) -> dict[str, str]:
    """train/val/test -> the first split name of ``names`` that means it."""
    out = {}
    for split, words in SPLIT_NAMES.items():
        hit = next((n for n in names if n.lower() in words), None)
        if hit is not None:
            out[split] = hit
    return out


def _splits(src: Any) -> tuple[dict[str, Any], list[str]] | None:
    """For a set of splits: ({"train"|"val"|"test": the split's own source}, all split names); else None."""
    kind = _kind(src)
    if kind == "diskdict":
        try:
            names = [str(n) for n in json.loads((Path(src) / "dataset_dict.json").read_text())["splits"]]
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(f"{Path(src) / 'dataset_dict.json'} is not a DatasetDict index.", "save the data again with save_to_disk.") from None
        return {s: Path(src) / n for s, n in _named_splits(names).items()}, names
    if kind == "hfdict":
        names = [str(n) for n in src]
        return {s: src[n] for s, n in _named_splits(names).items()}, names
    if kind == "splitfolder":
        found = _split_folders(Path(src))
        return dict(found), [p.name for p in found.values()]
    return None


def dataset_splits(data: Any, val_data: Any = None, test_data: Any = None) -> tuple[Any, Any, Any]:
    """A set of splits (a DatasetDict folder or object, an imagefolder with split subfolders) as
    (train, val, test) sources; val/test given by the caller win. Other sources pass unchanged."""
    found = _splits(data)
    if found is None:
        return data, val_data, test_data
    splits, names = found
    if "train" not in splits:
        raise DataError(f"{_name(data)} has splits {', '.join(names)} but none named train.",
                        f"pass one split as the data, e.g. {_name(data)}/{names[0]}, and others with --val-data/--test-data.")
    return splits["train"], splits.get("val") if val_data is None else val_data, splits.get("test") if test_data is None else test_data


def _name(src: Any) -> str:
    kind = _kind(src)
    return {"dataframe": "DataFrame", "arrow": "Arrow table", "hf": "Dataset", "hfdict": "DatasetDict",
            "pairs": "list of pairs"}.get(kind or "", str(src))


# ---------------------------------------------------------------- a table: columns read on demand


@dataclass
class _Table:
    """Column names, row count, and each column's values as Python objects (read when asked).

    ``base``: the folder relative image paths start from. ``declared``: column -> class names in
    their declared order (or a function giving them, read when that column is the label); ``coded``: columns whose values index ``declared`` (ClassLabel, or a list
    of them); ``images``: columns typed as images."""

    name: str
    base: Path | None
    columns: list[str]
    n: int
    values: Callable[[str], Iterator[Any]]
    declared: dict[str, list[str] | Callable[[], list[str]]] = field(default_factory=dict)
    coded: set[str] = field(default_factory=set)
    images: set[str] = field(default_factory=set)


def _arrow_table(table, name: str, base: Path | None, features: dict | None = None) -> _Table:
    """A pyarrow Table, or a Parquet file read a batch at a time (``pq.ParquetFile``)."""
    import pyarrow as pa

    if hasattr(table, "iter_batches"):  # a Parquet file: each column streamed when asked
        schema, n = table.schema_arrow, table.metadata.num_rows

        def chunks(col: str) -> Iterator[Any]:
            try:
                for batch in table.iter_batches(batch_size=_BATCH, columns=[col]):
                    yield batch.column(0)
            except (pa.ArrowException, OSError) as e:
                raise DataError(f"Cannot read column {col!r} of {name} ({e}).", "write the Parquet file again.") from None
    else:
        schema, n = table.schema, table.num_rows

        def chunks(col: str) -> Iterator[Any]:
            return iter(table.column(col).chunks)

    if features is None:
        meta = (schema.metadata or {}).get(b"huggingface")
        try:
            features = json.loads(meta)["info"]["features"] if meta else {}
        except (ValueError, KeyError, TypeError):
            features = {}
    declared, coded, images = {}, set(), set()
    for col, feature in (features or {}).items():
        kind, names = _hf_feature(feature)
        if kind == "image":
            images.add(col)
        elif kind == "classlabel":
            declared[col] = names
            coded.add(col)
    for f in schema:
        t = f.type
        untyped = f.name not in (features or {})  # a column the features describe (e.g. Audio) is what they say
        if untyped and (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
            images.add(f.name)
        elif pa.types.is_dictionary(t) and f.name not in declared:  # e.g. a pandas Categorical: its categories' order
            declared[f.name] = lambda col=f.name: list({str(v): None for c in chunks(col) for v in c.dictionary.to_pylist()})

    def values(col: str) -> Iterator[Any]:
        for chunk in chunks(col):  # a slice at a time: image bytes never all in memory at once
            if pa.types.is_dictionary(chunk.type):
                chunk = chunk.dictionary_decode()
            for start in range(0, len(chunk), _BATCH):
                yield from chunk.slice(start, _BATCH).to_pylist()

    return _Table(name, base, list(schema.names), n, values, declared, coded, images)


def _hf_feature(feature: Any) -> tuple[str | None, list[str]]:
    """('image', []) | ('classlabel', names) (also a list of ClassLabels: multilabel) | (None, [])."""
    if isinstance(feature, list) and feature:  # old datasets: a list feature written as [inner]
        feature = {"_type": "Sequence", "feature": feature[0]}
    if not isinstance(feature, dict):
        return None, []
    t = feature.get("_type")
    if t == "Image":
        return "image", []
    if t == "ClassLabel" and isinstance(feature.get("names"), list):
        return "classlabel", [str(n) for n in feature["names"]]
    if t in ("Sequence", "List", "LargeList"):
        inner = _hf_feature(feature.get("feature"))
        return inner if inner[0] == "classlabel" else (None, [])
    return None, []


def _read_ipc(path: Path):
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            try:
                return pa.ipc.open_file(source).read_all()
            except pa.ArrowInvalid:  # datasets writes the stream format
                source.seek(0)
                return pa.ipc.open_stream(source).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"Cannot read {path} as Arrow ({e}).", "pass an Arrow IPC file (file or stream format) or a Parquet file.") from None


def _read_file(path: Path):
    import pyarrow as pa

    if not path.is_file():
        raise DataError(f"Data path {path} does not exist.", "pass an existing Parquet or Arrow file.")
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(str(path))
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"Cannot read {path} as Parquet ({e}).", "pass a valid Parquet file.") from None
    return _read_ipc(path)


def _read_disk(folder: Path):
    """A ``save_to_disk`` folder: its shards in ``state.json``'s order and ``dataset_info.json``'s features."""
    import pyarrow as pa

    try:
        state = json.loads((folder / "state.json").read_text())
        info = json.loads((folder / "dataset_info.json").read_text())
        files = [folder / f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{folder} is not a readable save_to_disk folder ({type(e).__name__}: {e}).",
                        "save it again with Dataset.save_to_disk.") from None
    tables = [_read_ipc(f) for f in files]
    table = pa.concat_tables(tables) if len(tables) != 1 else tables[0]
    return table, (info.get("features") or {})


def _open(src: Any) -> _Table:
    kind = _kind(src)
    if kind in ("diskdict", "hfdict", "splitfolder"):
        splits, names = _splits(src)
        one = next((n for n in names if n.lower() in SPLIT_NAMES["test"]), names[0])
        example = f"{src}/{one}" if kind != "hfdict" else f"dataset_dict[{one!r}]"
        raise DataError(f"{_name(src)} holds several splits ({', '.join(names)}).",
                        f"pass one of them, e.g. {example} (fit and compare take the whole set: train, validation and test splits).")
    if kind == "file":
        path = Path(src)
        return _arrow_table(_read_file(path), str(path), path.parent)
    if kind == "disk":
        table, features = _read_disk(Path(src))
        return _arrow_table(table, str(src), Path(src), features)
    if kind == "imagefolder":
        meta = _metadata_file(Path(src))
        if meta.suffix == ".parquet":
            return _arrow_table(_read_file(meta), str(meta), meta.parent)
        from .dataset import _read_rows

        rows = _read_rows(meta)
        columns = list(rows[0]) if rows else []
        return _Table(str(meta), meta.parent, columns, len(rows), lambda c: (r.get(c) for r in rows))
    if kind == "arrow":
        return _arrow_table(src, "Arrow table", None)
    if kind == "hf":
        table = src.with_format("arrow")[:]  # applies any select/shuffle
        return _arrow_table(table, "Dataset", None, src.features.to_dict())
    if kind == "dataframe":
        return _dataframe(src)
    return _pairs(src)


def _dataframe(df) -> _Table:
    declared = {}
    for col in df.columns:
        if str(df[col].dtype) == "category":
            declared[str(col)] = [str(c) for c in df[col].cat.categories]
    columns = {str(c): c for c in df.columns}
    return _Table("DataFrame", None, list(columns), len(df), lambda c: iter(df[columns[c]].astype(object).tolist()), declared)


def _pairs(pairs) -> _Table:
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise DataError(f"list of pairs row {i} is not an (input, label) pair (got {type(pair).__name__}).",
                            "pass a list of (image path or text, label) tuples.")
    inputs = [p[0] for p in pairs]
    kinds = {_input_kind(x) for x in inputs if x is not None}
    if len(kinds) > 1:
        raise DataError("list of pairs mixes images and texts.", "pass images and texts in separate lists.")
    col = "image" if kinds == {"image"} else "text"
    values = {col: inputs, "label": [p[1] for p in pairs]}
    return _Table("list of pairs", None, [col, "label"], len(pairs), lambda c: iter(values[c]), images={col} if col == "image" else set())


def _input_kind(x: Any) -> str:
    if isinstance(x, (bytes, bytearray, memoryview, dict, os.PathLike)) or _is_pil(x):
        return "image"
    return "image" if isinstance(x, str) and Path(x.strip()).suffix.lower() in IMAGE_EXTENSIONS and "\n" not in x else "text"


def _is_pil(x: Any) -> bool:
    return type(x).__module__.startswith("PIL.") and hasattr(x, "save") and hasattr(x, "mode")


# ---------------------------------------------------------------- values


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or type(v).__name__ in ("NAType", "NaTType")


def _blob(data: bytes, name: str, root: Path) -> str:
    """Write ``data`` once under ``root/<sha256>/name`` (a temporary file renamed into place: never
    half-written) and return the path; an existing file of the same digest and size is reused."""
    digest = hashlib.sha256(data).hexdigest()
    path = root / digest[:2] / digest[2:32] / name  # 128 bits of the digest name the folder
    try:
        if path.stat().st_size == len(data):
            return str(path)
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".blob.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(path)


_MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))


def _blob_name(data: bytes, path: Any, row: int) -> str:
    """The original file name when the struct has one, else ``row<N>`` with the format's extension
    (unknown bytes get ``.png``: the decoder reads the content, not the name, and reports them)."""
    if isinstance(path, str) and path:
        name = re.sub(r"[^\w.\-]+", "_", Path(path).name)[:120]
        if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
            return name
    ext = next((e for magic, e in _MAGIC if data.startswith(magic)), ".webp" if data[8:12] == b"WEBP" else ".png")
    return f"row{row}{ext}"


class _Images:
    """Image values -> path strings: paths as they are (relative to ``base``), bytes into blobs."""

    def __init__(self, base: Path | None):
        self.base = base
        self.root: Path | None = None

    def __call__(self, v: Any, row: int) -> str | None:
        if _missing(v):
            return None
        if _is_pil(v):
            import io

            buf = io.BytesIO()
            v.save(buf, format="PNG")
            v = buf.getvalue()
        if isinstance(v, dict):
            data, path = v.get("bytes"), v.get("path")
            if data is None:
                return self.path(path) if isinstance(path, str) and path else None
            return self.blob(bytes(data), path, row)
        if isinstance(v, (bytes, bytearray, memoryview)):
            return self.blob(bytes(v), None, row)
        return self.path(str(v)) if str(v) else None

    def blob(self, data: bytes, path: Any, row: int) -> str:
        if self.root is None:
            from .._cache import cache_dir

            self.root = cache_dir("blobs")
        return _blob(data, _blob_name(data, path, row), self.root)

    def path(self, p: str) -> str:
        q = Path(p)
        return str(q if q.is_absolute() or self.base is None else self.base / q)


def _label_value(v: Any, names: list[str] | None, where: str, row: int) -> Any:
    """A ClassLabel index (or a list of them) as its name; -1 / missing -> None (an empty label)."""
    if _missing(v):
        return None
    if names is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_label_value(x, names, where, row) for x in v if not _missing(x) and x != -1]
    if v == -1:
        return None
    if not isinstance(v, int) or not 0 <= v < len(names):
        raise DataError(f"{where} row {row}: label {v!r} is not an index of the column's {len(names)} ClassLabel names.",
                        "fix the value (or the dataset's ClassLabel feature).")
    return names[v]


# ---------------------------------------------------------------- loading


def load_table(src: Any, label_column: str | None = None, text_column: str | None = None, path_column: str | None = None,
               task: str = "classification", label_sep: str = "|", label_names: list[str] | None = None, keep_bad: bool = False,
               unlabelled: bool = False):
    """``TaskData`` from a table source (see the module's docstring); as ``dataset._load_manifest``."""
    from .dataset import _LABEL_COLUMNS, _PATH_COLUMNS, _TEXT_COLUMNS, _load_manifest

    t = _open(src)
    if not t.n:
        raise DataError(f"{t.name} has no rows.", "add one row per example.")

    def pick(given: str | None, defaults: tuple[str, ...], option: str) -> str | None:
        if given is not None:
            if given not in t.columns:
                raise DataError(f"{t.name} has no column {given!r} (columns: {', '.join(t.columns)}).", f"pass {option} with one of those names.")
            return given
        return next((c for c in defaults if c in t.columns), None)

    label_col = pick(label_column, _LABEL_COLUMNS, "--label-column")
    if label_col is None and label_column is None and len(t.coded) == 1:
        label_col = next(iter(t.coded))  # the one ClassLabel column, whatever its name
    if label_col is None and not unlabelled:
        raise DataError(f"{t.name} has no label column (columns: {', '.join(t.columns)}).", "pass --label-column NAME.")
    pcol = tcol = None
    if text_column is None:
        typed = [c for c in t.columns if c in t.images]
        pcol = path_column if path_column is not None else (typed[0] if typed else None)
        pcol = pick(pcol, _PATH_COLUMNS, "--path-column")
    if pcol is None:
        tcol = pick(text_column, _TEXT_COLUMNS, "--text-column")
    if pcol is None and tcol is None:
        raise DataError(f"{t.name} has no image or text column (columns: {', '.join(t.columns)}).", "pass --path-column or --text-column.")
    col = pcol or tcol
    if pcol is not None:
        images = _Images(t.base)
        inputs = [images(v, i) for i, v in enumerate(t.values(pcol))]
    else:
        inputs = [None if _missing(v) else v if isinstance(v, str) else str(v) for v in t.values(tcol)]
    rows = [{col: x} for x in inputs]
    names = label_names
    if label_col is not None:
        declared = t.declared.get(label_col)
        declared = declared() if callable(declared) else declared
        coded = declared if label_col in t.coded else None
        labels = [_label_value(v, coded, t.name, i) for i, v in enumerate(t.values(label_col))]
        for row, y in zip(rows, labels):
            row[label_col] = y
        if names is None and declared is not None and task != "regression" and not unlabelled:
            present = {str(s) for y in labels if y is not None for s in (y if isinstance(y, list) else [y])}
            names = [n for n in declared if n in present] or None  # the declared order, classes with examples only
    return _load_manifest(Path(t.name), label_col, tcol, pcol, task, label_sep, names, keep_bad, unlabelled, rows=rows, first_row=0)


def as_inputs(items: Any) -> list[str] | None:
    """Inputs for ``predict`` from a table source, a ``TaskData`` or in-memory images (bytes, PIL);
    None when ``items`` is none of those (plain paths and texts: the caller's business)."""
    from .dataset import TaskData, load_unlabelled

    if isinstance(items, TaskData):
        return list(items.inputs)
    if _kind(items) is not None and not (isinstance(items, (list, tuple)) and _kind(items) == "pairs"):
        return load_unlabelled(items).inputs
    if isinstance(items, (list, tuple)) and any(isinstance(x, (bytes, bytearray, memoryview, dict)) or _is_pil(x) for x in items):
        images = _Images(None)
        return [images(x, i) or "" for i, x in enumerate(items)]
    return None
