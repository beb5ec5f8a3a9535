"""The data formats users already have (Parquet, Arrow, Hugging Face datasets folders, imagefolder
metadata, DataFrames, lists of pairs) read as their CSV equivalent, with the manifests' errors; and
``--config FILE``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

import transferkit as tk
from transferkit.cli import main
from transferkit.config import AdaptConfig, FitConfig, read_config_file
from transferkit.data.formats import dataset_splits
from transferkit.errors import ConfigError, DataError

from conftest import draw_tiny_image

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

pytestmark = pytest.mark.usefixtures("tk_cache", "one_thread")

CLASSES = ("circle", "square", "triangle")
TINY = ["--backbone", "timm/test_efficientnet", "--image-size", "32", "--batch-size", "8", "--no-progress"]


def one_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def tiny(tmp_path):
    """8 images per class under proj/imgs, listed by proj/data.csv (relative paths), rows in a fixed shuffled order."""
    rng = np.random.default_rng(0)
    rows = [(f"imgs/{c}_{i}.png", c) for c in CLASSES for i in range(8)]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    for rel, c in rows:
        draw_tiny_image(tmp_path / "proj" / rel, c, rng)
    (tmp_path / "proj" / "data.csv").write_text("image,label\n" + "".join(f"{p},{c}\n" for p, c in rows))
    return tmp_path / "proj", rows


def _bytes(proj: Path, rel: str) -> bytes:
    return (proj / rel).read_bytes()


def _same_data(a: tk.TaskData, b: tk.TaskData) -> None:
    """Same inputs (by content: a bytes image becomes a cache file of the same bytes), labels and targets."""
    assert len(a) == len(b) and a.modality == b.modality
    assert a.label_names == b.label_names
    assert a.targets.tolist() == b.targets.tolist()
    if a.modality == "image":
        assert [Path(x).read_bytes() for x in a.inputs] == [Path(x).read_bytes() for x in b.inputs]
        assert a.content_digest() == b.content_digest()  # the image store and features cache keys
    else:
        assert a.inputs == b.inputs


def _hf_dataset(proj, rows, names=CLASSES):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})
    return datasets.Dataset.from_dict({"image": [{"bytes": _bytes(proj, p), "path": Path(p).name} for p, _ in rows],
                                       "label": [list(names).index(c) for _, c in rows]}, features=feats)


# ---------------------------------------------------------------- round trips: the same data as the CSV


def test_every_format_reads_as_its_csv(tiny, tmp_path):
    pd = pytest.importorskip("pandas")
    proj, rows = tiny
    ref = tk.load_data(proj / "data.csv")
    paths = [p for p, _ in rows]
    labels = [c for _, c in rows]
    structs = [{"bytes": _bytes(proj, p), "path": p} for p in paths]

    # Parquet with image bytes in {bytes, path} structs, written by pyarrow alone (no HF metadata)
    pq.write_table(pa.table({"image": structs, "label": labels}), proj / "bytes.parquet")
    # Arrow IPC (file format) with relative path strings, and in the stream format
    table = pa.table({"path": paths, "label": labels})
    with pa.ipc.new_file(str(proj / "paths.arrow"), table.schema) as w:
        w.write_table(table)
    with pa.ipc.new_stream(str(proj / "paths_stream.arrow"), table.schema) as w:
        w.write_table(table)
    # imagefolder: metadata.csv / metadata.jsonl with file_name beside the images
    (proj / "meta_csv").mkdir()
    (proj / "meta_csv" / "metadata.csv").write_text("file_name,label\n" + "".join(f"../{p},{c}\n" for p, c in rows))
    (proj / "imgs" / "metadata.jsonl").write_text("".join(json.dumps({"file_name": Path(p).name, "label": c}) + "\n" for p, c in rows))

    sources = {
        "parquet (bytes)": proj / "bytes.parquet",
        "arrow file": proj / "paths.arrow",
        "arrow stream": proj / "paths_stream.arrow",
        "imagefolder metadata.csv": proj / "meta_csv",
        "imagefolder metadata.jsonl": proj / "imgs",
        "DataFrame (paths)": pd.DataFrame({"image": [str(proj / p) for p in paths], "label": labels}),
        "DataFrame (bytes structs, categorical labels)": pd.DataFrame({"image": structs, "label": pd.Categorical(labels, categories=CLASSES)}),
        "pairs (paths)": [(str(proj / p), c) for p, c in rows],
        "pairs (Path, bytes)": [(proj / p if i % 2 else _bytes(proj, p), c) for i, (p, c) in enumerate(rows)],
    }
    for name, src in sources.items():
        data = tk.load_data(src)
        assert data.source, name
        _same_data(data, ref)
    # bytes become one cache file per content digest, named after the struct's file name
    blob = Path(tk.load_data(proj / "bytes.parquet").inputs[0])
    assert blob.name == Path(paths[0]).name and "blobs" in blob.parts


def test_hf_save_to_disk_and_parquet_with_image_feature_and_classlabel(tiny, tmp_path):
    proj, rows = tiny
    ref = tk.load_data(proj / "data.csv")
    ds = _hf_dataset(proj, rows)
    ds.save_to_disk(str(tmp_path / "saved"), num_shards=2)  # two shards, read in order
    ds.to_parquet(str(tmp_path / "hf.parquet"))  # the features travel in the schema metadata
    for src in (tmp_path / "saved", tmp_path / "hf.parquet", ds):
        _same_data(tk.load_data(src), ref)
    # pyarrow alone reads what datasets.load_from_disk reads, also after shuffle/select
    datasets = pytest.importorskip("datasets")
    ds.shuffle(seed=1).select(range(20)).save_to_disk(str(tmp_path / "shuffled"))
    mine, theirs = tk.load_data(tmp_path / "shuffled"), datasets.load_from_disk(str(tmp_path / "shuffled"))
    assert mine.targets.tolist() == theirs["label"]
    assert [Path(x).read_bytes() for x in mine.inputs] == [im["bytes"] for im in theirs.cast_column("image", datasets.Image(decode=False))["image"]]

    # a ClassLabel keeps its own order (not sorted), restricted to the classes with examples
    names = ("triangle", "unused", "circle", "square")
    other = _hf_dataset(proj, rows, names)
    other.save_to_disk(str(tmp_path / "ordered"))
    data = tk.load_data(tmp_path / "ordered")
    assert data.label_names == ["triangle", "circle", "square"]
    assert [data.label_names[t] for t in data.targets] == [c for _, c in rows]
    # the multilabel form: a list of ClassLabels
    datasets = pytest.importorskip("datasets")
    ml = datasets.Dataset.from_dict({"text": ["a b", "b", "c a"], "tags": [[1, 0], [0], [2, 1]]},
                                    features=datasets.Features({"text": datasets.Value("string"),
                                                                "tags": datasets.Sequence(datasets.ClassLabel(names=["b", "a", "c"]))}))
    m = tk.load_data(ml, label_column="tags", task="multilabel")
    assert m.label_names == ["b", "a", "c"] and m.targets.tolist() == [[1, 1, 0], [1, 0, 0], [0, 1, 1]]


def test_dataset_dict_splits_map_to_train_val_test(tiny, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    proj, rows = tiny
    ds = _hf_dataset(proj, rows)
    dd = datasets.DatasetDict(train=ds.select(range(12)), validation=ds.select(range(12, 18)), test=ds.select(range(18, 24)))
    dd.save_to_disk(str(tmp_path / "dd"))
    train, val, test = dataset_splits(tmp_path / "dd")
    assert (Path(train).name, Path(val).name, Path(test).name) == ("train", "validation", "test")
    assert dataset_splits(tmp_path / "dd", None, "mine.csv")[2] == "mine.csv"  # given sets win

    cfg = FitConfig()
    tr, va, te = tk.api.prepare_splits(tmp_path / "dd", cfg=cfg)
    ref = tk.load_data(proj / "data.csv")
    assert (len(tr), len(va), len(te)) == (12, 6, 6)  # the dict's own splits, nothing split again
    assert tr.targets.tolist() == ref.targets[:12].tolist() and te.targets.tolist() == ref.targets[18:].tolist()
    # the in-memory DatasetDict: the same
    assert [len(p) for p in tk.api.prepare_splits(dd, cfg=cfg)] == [12, 6, 6]

    # the whole dict where one data set is expected: one line naming a split to pass
    with pytest.raises(DataError, match=r"holds several splits \(train, validation, test\).*dd/test"):
        tk.load_data(tmp_path / "dd")
    # imagefolder with split subfolders, each with its metadata
    for split, part in (("train", rows[:18]), ("test", rows[18:])):
        (proj / split).mkdir()
        (proj / split / "metadata.csv").write_text("file_name,label\n" + "".join(f"../{p},{c}\n" for p, c in part))
    tr, va, te = tk.api.prepare_splits(proj, cfg=cfg)
    assert len(te) == 6 and len(tr) + len(va) == 18


def test_text_formats_read_as_their_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    texts = ["a fine day", "awful, really", "lovely", "bad, sad", "superb", "dreadful"]
    labels = ["pos", "neg"] * 3
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in zip(texts, labels)))
    ref = tk.load_data(csv)
    pq.write_table(pa.table({"text": texts, "label": labels}), tmp_path / "t.parquet")
    for src in (tmp_path / "t.parquet", pd.DataFrame({"text": texts, "label": labels}), list(zip(texts, labels))):
        _same_data(tk.load_data(src), ref)
    # a Categorical keeps its categories' order through Parquet too
    pd.DataFrame({"text": texts, "label": pd.Categorical(labels, categories=["pos", "neg"])}).to_parquet(tmp_path / "cat.parquet")
    cat = tk.load_data(tmp_path / "cat.parquet")
    assert cat.label_names == ["pos", "neg"] and [cat.label_names[t] for t in cat.targets] == labels
    # predict's inputs from a table or a manifest (labels unread)
    from transferkit.data.dataset import load_inputs

    assert load_inputs([str(tmp_path / "t.parquet")]) == (texts, "text") == load_inputs([str(csv)])
    # regression and a custom text column
    pq.write_table(pa.table({"review": texts, "score": [1.0, -2.0, 3.5, 0.0, 2.0, 1.0]}), tmp_path / "r.parquet")
    r = tk.load_data(tmp_path / "r.parquet", label_column="score", task="regression")
    assert r.modality == "text" and r.targets.tolist() == [1.0, -2.0, 3.5, 0.0, 2.0, 1.0]


def test_fit_and_predict_from_bytes_equal_the_csv(tiny, tmp_path, tiny_timm_weights):
    """The whole path (screening, decoded store, features cache, split, probe) sees the same data:
    a linear probe fitted on a save_to_disk folder of image bytes predicts as the one fitted on the CSV."""
    proj, rows = tiny
    _hf_dataset(proj, rows).save_to_disk(str(tmp_path / "saved"))
    kw = dict(backbone="timm/test_efficientnet", backbone_weights=str(tiny_timm_weights), image_size=32, strategy="linear-probe",
              progress=False)
    a = tk.fit(proj / "data.csv", **kw)
    b = tk.fit(tmp_path / "saved", **kw)
    assert a.metrics == b.metrics
    files = [str(proj / p) for p, _ in rows]
    pa_, pb = a.model.predict(files), b.model.predict(files)
    assert [r["probabilities"] for r in pa_] == [r["probabilities"] for r in pb]
    # predict takes a table of inputs (its labels unread) and evaluate a labelled one, in any format
    from_table = b.model.predict(str(tmp_path / "saved"))
    assert [r["probabilities"] for r in from_table] == [r["probabilities"] for r in pb]
    assert b.model.evaluate(tmp_path / "saved") == b.model.evaluate(proj / "data.csv") == tk.evaluate(b.model, [(f, c) for f, (_, c) in zip(files, rows)])


# ---------------------------------------------------------------- bad input: the manifests' errors


def _bad_bytes_parquet(proj, rows, path):
    structs = [{"bytes": _bytes(proj, p), "path": Path(p).name} for p, _ in rows]
    structs[5] = {"bytes": b"\x00\x01 definitely not an image" * 4, "path": None}
    pq.write_table(pa.table({"image": structs, "label": [c for _, c in rows]}), path)
    return path


def test_bad_input_one_line_exit_2(tiny, tmp_path, capsys, tiny_timm_weights):
    proj, rows = tiny
    labels = [c for _, c in rows]
    paths = [str(proj / p) for p, _ in rows]
    good = proj / "good.parquet"
    pq.write_table(pa.table({"image": paths, "label": labels}), good)
    args = [*TINY, "--backbone-weights", str(tiny_timm_weights), "--strategy", "linear-probe"]

    assert main(["fit", str(good), "--label-column", "colour", *args, "--out", str(tmp_path / "r1")]) == 2
    line = one_line(capsys)
    assert "good.parquet has no column 'colour' (columns: image, label)" in line and "--label-column" in line

    empty = proj / "empty_label.parquet"
    pq.write_table(pa.table({"image": paths, "label": labels[:3] + [None] + labels[4:]}), empty)
    assert main(["fit", str(empty), *args, "--out", str(tmp_path / "r2")]) == 2
    assert "empty_label.parquet row 3: empty value in label column 'label'" in one_line(capsys)

    bad = _bad_bytes_parquet(proj, rows, proj / "bad.parquet")
    assert main(["fit", str(bad), *args, "--out", str(tmp_path / "r3")]) == 2
    line = one_line(capsys)
    assert "row5.png" in line and "Cannot read image" in line and "--on-bad-sample skip" in line
    assert not (tmp_path / "r3").exists()  # nothing written
    assert main(["validate", str(bad)]) == 1
    assert "row5.png" in capsys.readouterr().out

    assert main(["fit", str(bad), *args, "--out", str(tmp_path / "r4"), "--on-bad-sample", "skip"]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "r4" / "report.json").read_text())
    assert report["skipped_samples"]["count"] == 1 and Path(report["skipped_samples"]["files"][0]).name == "row5.png"
    assert report["data"]["n_train"] + report["data"]["n_val"] + report["data"]["n_test"] == len(rows) - 1

    datasets = pytest.importorskip("datasets")
    unlabelled = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, -1, 1]},
                                            features=datasets.Features({"text": datasets.Value("string"),
                                                                        "label": datasets.ClassLabel(names=["x", "y"])}))
    with pytest.raises(DataError, match="Dataset row 1: empty value in label column 'label'"):  # -1: datasets' "no label"
        tk.load_data(unlabelled)
    with pytest.raises(DataError, match=r"list of pairs row 1 is not an \(input, label\) pair"):
        tk.load_data([("a.png", "x"), "b.png"])
    with pytest.raises(DataError, match="mixes images and texts"):
        tk.load_data([(paths[0], "x"), ("some text", "y")])
    missing = proj / "missing.parquet"
    pq.write_table(pa.table({"image": ["nope.png", paths[1]], "label": ["a", "b"]}), missing)
    with pytest.raises(DataError, match=r"missing.parquet row 0: image .*nope.png does not exist"):
        tk.load_data(missing)
    (proj / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="Cannot read .*broken.parquet as Parquet"):
        tk.load_data(proj / "broken.parquet")
    with pytest.raises(DataError, match="holds several splits"):
        tk.load_data(_dd_folder(proj, rows, tmp_path))


def _dd_folder(proj, rows, tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = _hf_dataset(proj, rows[:6])
    datasets.DatasetDict(train=ds, test=ds).save_to_disk(str(tmp_path / "dd2"))
    return tmp_path / "dd2"


# ---------------------------------------------------------------- --config FILE


def test_config_file_equals_flags_and_flags_override(tiny, tmp_path, capsys, tiny_timm_weights):
    proj, _ = tiny
    data = str(proj / "data.csv")
    flags = ["--backbone", "timm/test_efficientnet", "--backbone-weights", str(tiny_timm_weights), "--image-size", "32",
             "--strategy", "linear-probe", "--batch-size", "8", "--split-seed", "3"]
    (tmp_path / "run.yaml").write_text(f"backbone: timm/test_efficientnet\nbackbone-weights: {tiny_timm_weights}\nimage_size: 32\n"
                                       "strategy: linear-probe\nbatch_size: 8\nsplit_seed: 3\nlr: 1e-3\n")
    assert main(["fit", data, *flags, "--lr", "1e-3", "--out", str(tmp_path / "flags"), "--no-progress"]) == 0
    assert main(["fit", data, "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "file"), "--no-progress"]) == 0
    # the saved run as the config: the same run again; an option on the command line wins over the file
    assert main(["fit", data, "--config", str(tmp_path / "file" / "report.json"), "--out", str(tmp_path / "again"),
                 "--split-seed", "4", "--no-progress"]) == 0
    capsys.readouterr()
    rep = {n: json.loads((tmp_path / n / "report.json").read_text()) for n in ("flags", "file", "again")}
    assert rep["file"]["fit_config"] == rep["flags"]["fit_config"]
    assert rep["file"]["fit_config"]["lr"] == 1e-3 and rep["file"]["fit_config"]["split_seed"] == 3
    assert rep["file"]["metrics"] == rep["flags"]["metrics"]
    assert rep["again"]["fit_config"] == {**rep["file"]["fit_config"], "split_seed": 4}

    # Python: a file as config, and FitConfig.from_file on a run folder
    assert FitConfig.from_file(tmp_path / "file") == FitConfig.from_dict(rep["file"]["fit_config"])
    res = tk.fit(data, config=str(tmp_path / "run.yaml"), progress=False)
    assert res.model.info["fit_config"] == rep["file"]["fit_config"]


def test_config_file_errors_one_line(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("text,label\na,x\nb,y\n")
    cases = {
        "bad_key.yaml": ("epochs: 2\nepoch: 3\n", "bad_key.yaml: unknown key 'epoch'"),
        "bad_type.json": ('{"epochs": "many"}', "bad_type.json: epochs must be a whole number (got 'many')"),
        "bad_bool.yaml": ("augment: maybe\n", "bad_bool.yaml: augment must be true or false"),
        "broken.json": ('{"epochs": 2', "broken.json is not valid JSON"),
        "list.yaml": ("- 1\n- 2\n", "holds a list, not a mapping"),
        "adapt_only.yaml": ("method: dann\n", "unknown key 'method' (not a FitConfig field)"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        assert main(["fit", str(data), "--config", str(tmp_path / name), "--no-progress"]) == 2, name
        assert expected in one_line(capsys), name
    assert main(["fit", str(data), "--config", str(tmp_path / "none.yaml")]) == 2
    assert "Config file" in one_line(capsys) and not (tmp_path / "transferkit-run").exists()
    with pytest.raises(ConfigError, match="must be a number"):
        FitConfig.from_file(_write(tmp_path / "x.yaml", "lr: fast\n"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_adapt_config_file_fills_both_configs(tmp_path, monkeypatch, capsys):
    f = _write(tmp_path / "a.yaml", "method: dann\nthreshold: 0.8\nepochs: 3\nlr: 3e-4\n")
    parts = read_config_file(f, (FitConfig, AdaptConfig))
    assert parts[FitConfig] == {"epochs": 3, "lr": 3e-4} and parts[AdaptConfig] == {"method": "dann", "threshold": 0.8}
    assert AdaptConfig.from_file(f) == AdaptConfig(method="dann", threshold=0.8)
    # a saved adapt report holds both
    report = _write(tmp_path / "report.json", json.dumps({"fit_config": FitConfig(epochs=4).to_dict(),
                                                          "adapt_config": AdaptConfig(select="snd").to_dict(), "rows": []}))
    assert AdaptConfig.from_file(report).select == "snd" and FitConfig.from_file(report).epochs == 4

    seen = {}

    class Stop(tk.TransferkitError):
        pass

    def fake_adapt(source, target, *, config, adapt_config, **kw):
        seen.update(cfg=config, acfg=adapt_config)
        raise Stop("stopped")

    monkeypatch.setattr("transferkit.adapt.adapt", fake_adapt)
    assert main(["adapt", "--source", "s", "--target", "t", "--config", str(f), "--threshold", "0.7"]) == 2
    capsys.readouterr()
    assert seen["acfg"] == AdaptConfig(method="dann", threshold=0.7)  # the command line wins
    assert seen["cfg"].epochs == 3 and seen["cfg"].lr == 3e-4


def test_adapt_api_reads_both_configs_from_one_file(tmp_path, monkeypatch):
    import transferkit.adapt.run as run

    f = _write(tmp_path / "a.yaml", "method: coral\nepochs: 2\n")
    seen = {}

    def stop(source, val, test, cfg, **kw):  # the split is the first work after the configs are built
        seen["cfg"] = cfg
        raise DataError("stop")

    monkeypatch.setattr("transferkit.api.prepare_splits", stop)
    with pytest.raises(DataError, match="stop"):
        run.adapt("s", "t", config=str(f))
    assert seen["cfg"].epochs == 2
    with pytest.raises(tk.TransferkitError, match="no-such-method"):  # the adaptation fields are read from the same file
        run.adapt("s", "t", config=str(_write(tmp_path / "b.yaml", "method: no-such-method\n")))
