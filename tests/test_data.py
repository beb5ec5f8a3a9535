"""Data loading: image folders, manifests, image decoding, stratified splits and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import transferkit as tk
from transferkit.data import decode_image, decode_images, load_inputs, open_rgb
from transferkit.errors import ConfigError, DataError, TransferkitError

pytestmark = pytest.mark.usefixtures("tk_cache")

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _png(path: Path, colour=(10, 20, 30), size=(4, 4), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _pixels(path) -> list:
    return np.asarray(open_rgb(path)).tolist()


# ---------------------------------------------------------------- image folders


def test_image_folder_sorted_label_names_and_targets(tmp_path):
    root = tmp_path / "data"
    for cls, n in (("zebra", 2), ("apple", 3), ("mango", 1)):  # created out of order
        for i in range(n):
            _png(root / cls / f"{i}.png")
    _write(root / "apple" / ".DS_Store", "junk")  # hidden files are ignored
    (root / ".cache").mkdir()  # hidden folders are not classes

    data = tk.load_data(root)

    assert data.label_names == ["apple", "mango", "zebra"]
    assert data.modality == "image" and data.task == "classification"
    assert len(data) == 6 and data.targets.dtype == np.int64
    for path, target in zip(data.inputs, data.targets):
        assert Path(path).parent.name == data.label_names[target]
    assert np.bincount(data.targets).tolist() == [3, 1, 2]
    assert data.num_outputs == 3


def test_image_folder_nested_files_count_for_their_class(tmp_path):
    root = tmp_path / "data"
    _png(root / "a" / "x.png")
    _png(root / "a" / "sub" / "y.jpg")
    _png(root / "b" / "z.png")
    data = tk.load_data(root)
    assert sorted(Path(p).name for p, t in zip(data.inputs, data.targets) if t == 0) == ["x.png", "y.jpg"]


def test_fixed_label_names_map_targets_by_name(tmp_path):
    root = tmp_path / "data"
    _png(root / "a" / "1.png")
    _png(root / "b" / "1.png")
    data = tk.load_data(root, label_names=["b", "a"])
    assert data.label_names == ["b", "a"]
    assert {Path(p).parent.name: int(t) for p, t in zip(data.inputs, data.targets)} == {"a": 1, "b": 0}


# ---------------------------------------------------------------- decoding


def test_rgba_is_composited_on_white(tmp_path):
    im = Image.new("RGBA", (3, 1))
    im.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black -> white
    im.putpixel((1, 0), (255, 0, 0, 255))  # opaque red stays red
    im.putpixel((2, 0), (0, 0, 255, 128))  # half-transparent blue -> light blue
    im.save(tmp_path / "a.png")

    px = _pixels(tmp_path / "a.png")[0]

    assert px[0] == [255, 255, 255]
    assert px[1] == [255, 0, 0]
    assert px[2][2] == 255 and all(abs(v - 127) <= 2 for v in px[2][:2])


def test_grayscale_and_la_become_rgb(tmp_path):
    Image.new("L", (2, 2), 100).save(tmp_path / "g.png")
    Image.new("LA", (1, 1), (10, 0)).save(tmp_path / "la.png")  # transparent dark grey -> white
    assert open_rgb(tmp_path / "g.png").mode == "RGB"
    assert _pixels(tmp_path / "g.png")[0][0] == [100, 100, 100]
    assert _pixels(tmp_path / "la.png") == [[[255, 255, 255]]]


def test_palette_with_transparency_becomes_rgb_on_white(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    im.putpixel((0, 0), 0)  # index 0: declared transparent
    im.putpixel((1, 0), 1)  # index 1: red
    im.save(tmp_path / "p.png", transparency=0)
    assert Image.open(tmp_path / "p.png").mode == "P"

    assert _pixels(tmp_path / "p.png") == [[[255, 255, 255], [255, 0, 0]]]


def test_palette_without_transparency_keeps_its_colours(tmp_path):
    im = Image.new("P", (1, 1))
    im.putpalette([12, 34, 56] + [0] * (256 * 3 - 3))
    im.save(tmp_path / "p.gif")
    assert _pixels(tmp_path / "p.gif") == [[[12, 34, 56]]]


def test_rgb_png_transparency_key_becomes_white(tmp_path):
    im = Image.new("RGB", (2, 1), (1, 2, 3))
    im.putpixel((1, 0), (9, 9, 9))
    im.save(tmp_path / "t.png", transparency=(1, 2, 3))
    assert _pixels(tmp_path / "t.png") == [[[255, 255, 255], [9, 9, 9]]]


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    r, g, b = _pixels(tmp_path / "c.jpg")[4][4]
    assert r > 230 and g < 25 and b < 25


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    row = [px[0] for px in _pixels(tmp_path / "g16.png")[0]]
    assert row == [0, 64, 128, 255]  # a plain convert("RGB") clips to [0, 255, 255, 255]


@pytest.mark.parametrize("orientation, top, bottom", [(6, RED, BLUE), (8, BLUE, RED)])
def test_exif_orientation_is_applied(tmp_path, orientation, top, bottom):
    im = Image.new("RGB", (2, 1))  # 2 wide, 1 high: red left, blue right
    im.putpixel((0, 0), RED)
    im.putpixel((1, 0), BLUE)
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: rotate 90 clockwise to display, 8: 90 counter-clockwise
    im.save(tmp_path / "o.png", exif=exif)

    rgb = open_rgb(tmp_path / "o.png")

    assert rgb.size == (1, 2)
    assert np.asarray(rgb).tolist() == [[list(top)], [list(bottom)]]


def test_decode_image_resizes_shorter_side_and_centre_crops(tmp_path):
    im = Image.new("RGB", (60, 20), RED)  # thirds: red | green | blue
    im.paste((0, 255, 0), (20, 0, 40, 20))
    im.paste(BLUE, (40, 0, 60, 20))
    im.save(tmp_path / "wide.png")

    x = decode_image(tmp_path / "wide.png", 16)

    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8
    centre = x[:, 4:12, 4:12]
    assert centre[1].min() > 200 and centre[0].max() < 50 and centre[2].max() < 50  # the green middle


def test_decode_images_stacks_in_order(tmp_path):
    a = _png(tmp_path / "a.png", RED, (10, 10))
    b = _png(tmp_path / "b.png", BLUE, (7, 13), mode="RGB")
    calls = []
    x = decode_images([str(a), str(b)], 8, progress=calls.append)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.uint8
    assert x[0, :, 4, 4].tolist() == list(RED) and x[1, :, 4, 4].tolist() == list(BLUE)
    assert calls == [1, 1]


# ---------------------------------------------------------------- manifests


def _image_files(tmp_path) -> dict[str, Path]:
    return {name: _png(tmp_path / "proj" / "imgs" / f"{name}.png", c) for name, c in (("r1", RED), ("r2", RED), ("b1", BLUE), ("b2", BLUE))}


def test_csv_manifest_with_relative_paths_resolved_from_its_folder(tmp_path, monkeypatch):
    files = _image_files(tmp_path)
    manifest = _write(tmp_path / "proj" / "train.csv",
                      f"path,label\nimgs/r1.png,red\nimgs/b1.png,blue\nimgs/r2.png,red\n{files['b2']},blue\n")
    monkeypatch.chdir(tmp_path)  # not the manifest's folder

    data = tk.load_data(manifest)

    assert data.modality == "image"
    assert [Path(p).resolve() for p in data.inputs] == [files[k].resolve() for k in ("r1", "b1", "r2", "b2")]
    assert data.label_names == ["blue", "red"]
    assert data.targets.tolist() == [1, 0, 1, 0]


def test_tsv_manifest_with_custom_path_and_label_columns(tmp_path):
    _image_files(tmp_path)
    manifest = _write(tmp_path / "proj" / "data.tsv", "file name\tcolour\textra\nimgs/r1.png\tred\tx\nimgs/b1.png\tblue\ty\n")
    data = tk.load_data(manifest, path_column="file name", label_column="colour")
    assert [Path(p).name for p in data.inputs] == ["r1.png", "b1.png"]
    assert data.label_names == ["blue", "red"] and data.targets.tolist() == [1, 0]


def test_csv_text_manifest_quoted_commas_and_label_column(tmp_path):
    manifest = _write(tmp_path / "t.csv", 'review,sentiment\n"good, really good",pos\nawful,neg\n"fine",pos\n')
    data = tk.load_data(manifest, label_column="sentiment")
    assert data.modality == "text"
    assert data.inputs == ["good, really good", "awful", "fine"]
    assert data.label_names == ["neg", "pos"] and data.targets.tolist() == [1, 0, 1]


def test_csv_with_utf8_bom_finds_its_first_column(tmp_path):
    manifest = tmp_path / "excel.csv"
    manifest.write_bytes("\ufefftext,label\nhello,a\nbye,b\n".encode("utf-8"))
    data = tk.load_data(manifest)
    assert data.inputs == ["hello", "bye"] and data.label_names == ["a", "b"]


def test_jsonl_text_manifest(tmp_path):
    rows = [{"text": "ünïcode ok", "label": "x"}, {"text": "second", "label": "y"}, {"text": "third", "label": 7}]
    manifest = _write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    data = tk.load_data(manifest, text_column="text")
    assert data.inputs == ["ünïcode ok", "second", "third"]
    assert data.label_names == ["7", "x", "y"] and data.targets.tolist() == [1, 2, 0]


def test_jsonl_image_manifest_relative_paths(tmp_path):
    files = _image_files(tmp_path)
    lines = [json.dumps({"image": "imgs/r1.png", "label": "red"}), json.dumps({"image": "imgs/b2.png", "label": "blue"})]
    manifest = _write(tmp_path / "proj" / "sub" / ".." / "m.jsonl", "\n".join(lines))
    data = tk.load_data(manifest)
    assert [Path(p).resolve() for p in data.inputs] == [files["r1"].resolve(), files["b2"].resolve()]


def test_multilabel_pipe_separated(tmp_path):
    manifest = _write(tmp_path / "ml.csv", "text,labels\nt1,cat|dog\nt2,dog\nt3, bird | cat \n")
    data = tk.load_data(manifest, task="multilabel")
    assert data.task == "multilabel" and data.label_names == ["bird", "cat", "dog"]
    assert data.targets.dtype == np.float32
    assert data.targets.tolist() == [[0, 1, 1], [0, 0, 1], [1, 1, 0]]
    assert data.num_outputs == 3


def test_multilabel_jsonl_lists(tmp_path):
    manifest = _write(tmp_path / "ml.jsonl", '{"text": "a", "label": ["x", "y"]}\n{"text": "b", "label": ["y"]}\n')
    data = tk.load_data(manifest, task="multilabel")
    assert data.label_names == ["x", "y"] and data.targets.tolist() == [[1, 1], [0, 1]]


def test_regression_targets(tmp_path):
    manifest = _write(tmp_path / "r.csv", "text,score\na,1.5\nb,-2\nc,3e1\n")
    data = tk.load_data(manifest, label_column="score", task="regression")
    assert data.task == "regression" and data.label_names == [] and data.num_outputs == 1
    assert data.targets.dtype == np.float32
    assert data.targets.tolist() == [1.5, -2.0, 30.0]


def test_regression_rejects_non_numbers(tmp_path):
    manifest = _write(tmp_path / "r.csv", "text,label\na,1\nb,high\n")
    with pytest.raises(DataError, match="regression labels must be numbers"):
        tk.load_data(manifest, task="regression")


def test_load_inputs_expands_folders_and_text_files(tmp_path):
    _png(tmp_path / "imgs" / "b.png")
    _png(tmp_path / "imgs" / "sub" / "a.jpg")
    _write(tmp_path / "imgs" / "notes.md", "not an image")
    files, kind = load_inputs([str(tmp_path / "imgs")])
    assert kind == "image" and [Path(f).name for f in files] == ["b.png", "a.jpg"]

    lines = _write(tmp_path / "in.txt", "first line\n\n  second  \n")
    texts, kind = load_inputs([str(lines), "raw text"])
    assert kind == "text" and texts == ["first line", "second", "raw text"]

    long_text = "word" * 100  # longer than a file name may be: still a text, not an OSError
    assert load_inputs([long_text]) == ([long_text], "text")


def test_load_inputs_errors(tmp_path):
    img = _png(tmp_path / "a.png")
    with pytest.raises(DataError, match="mix images and texts"):
        load_inputs([str(img), "some text"])
    with pytest.raises(DataError, match="missing.png"):
        load_inputs([str(img), str(tmp_path / "missing.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="contains no images"):
        load_inputs([str(tmp_path / "empty")])
    with pytest.raises(DataError, match="blank.txt"):
        load_inputs([str(_write(tmp_path / "blank.txt", "\n  \n"))])


# ---------------------------------------------------------------- splits


def _text_data(counts: dict[str, int]) -> tk.TaskData:
    texts = [f"{c}-{i}" for c, n in counts.items() for i in range(n)]
    names = sorted(counts)
    targets = np.array([names.index(t.split("-")[0]) for t in texts], dtype=np.int64)
    return tk.TaskData(texts, targets, names, "text")


def test_split_is_stratified_reproducible_and_a_partition():
    counts = {"a": 40, "b": 20, "c": 10, "d": 3}
    data = _text_data(counts)

    train, val, test = tk.split_data(data, val=0.2, test=0.3, seed=7)
    again = tk.split_data(data, val=0.2, test=0.3, seed=7)
    other = tk.split_data(data, val=0.2, test=0.3, seed=8)

    parts = [train.inputs, val.inputs, test.inputs]
    assert [p.inputs for p in again] == parts  # same seed, same split
    assert [p.inputs for p in other] != parts  # the seed matters
    assert sorted(sum(parts, [])) == sorted(data.inputs)  # union = all, and no duplicates
    assert not set(train.inputs) & set(val.inputs) and not set(train.inputs) & set(test.inputs) and not set(val.inputs) & set(test.inputs)
    for part in (train, val, test):  # labels travel with their inputs
        assert all(part.label_names[t] == x.split("-")[0] for x, t in zip(part.inputs, part.targets))
    assert set(train.targets.tolist()) == set(range(4))  # every class in train
    for c, name in enumerate(data.label_names):
        k = counts[name]
        assert abs((test.targets == c).sum() - 0.3 * k) <= 1
        assert abs((val.targets == c).sum() - 0.2 * k) <= 1
        assert (train.targets == c).sum() >= 1
    assert abs(len(test) - 0.3 * len(data)) <= 4 and abs(len(val) - 0.2 * len(data)) <= 4


def test_split_keeps_one_training_example_of_tiny_classes():
    data = _text_data({"a": 1, "b": 2, "c": 30})
    train, val, test = tk.split_data(data, val=0.4, test=0.4, seed=0)
    assert set(train.targets.tolist()) == {0, 1, 2}
    assert len(train) + len(val) + len(test) == len(data)


def test_split_of_regression_data_is_a_partition(tmp_path):
    data = tk.TaskData([f"t{i}" for i in range(20)], np.arange(20, dtype=np.float32), [], "text", "regression")
    train, val, test = tk.split_data(data, 0.25, 0.25, seed=1)
    assert (len(train), len(val), len(test)) == (10, 5, 5)
    assert sorted(train.inputs + val.inputs + test.inputs) == sorted(data.inputs)
    assert all(float(x[1:]) == y for x, y in zip(test.inputs, test.targets))


@pytest.mark.parametrize("val, test", [(0.6, 0.5), (-0.1, 0.2), (0.2, 1.0)])
def test_split_rejects_bad_fractions(val, test):
    with pytest.raises(ConfigError, match="split fractions"):
        tk.split_data(_text_data({"a": 5, "b": 5}), val=val, test=test)


# ---------------------------------------------------------------- errors


def test_errors_are_transferkit_errors():
    assert issubclass(DataError, TransferkitError) and issubclass(ConfigError, TransferkitError)


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        tk.load_data(tmp_path / "nowhere")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty has no class subfolders") as e:
        tk.load_data(tmp_path / "empty")
    assert "subfolder per class" in e.value.fix


def test_folder_of_loose_images_without_class_subfolders(tmp_path):
    for i in range(3):
        _png(tmp_path / "flat" / f"{i}.png")
    with pytest.raises(DataError, match=r"flat has no class subfolders \(3 loose images\)"):
        tk.load_data(tmp_path / "flat")


def test_class_subfolders_without_images(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "b").mkdir()
    with pytest.raises(DataError, match="No examples found in .*d"):
        tk.load_data(tmp_path / "d")


def test_single_class(tmp_path):
    _png(tmp_path / "one" / "cats" / "1.png")
    _png(tmp_path / "one" / "cats" / "2.png")
    with pytest.raises(DataError, match=r"only 1 class \(cats\).*at least 2"):
        tk.load_data(tmp_path / "one")


def test_single_class_manifest(tmp_path):
    with pytest.raises(DataError, match="only 1 class"):
        tk.load_data(_write(tmp_path / "t.csv", "text,label\na,x\nb,x\n"))


def test_non_image_file_in_class_folder(tmp_path):
    _png(tmp_path / "d" / "a" / "1.png")
    _png(tmp_path / "d" / "b" / "1.png")
    _write(tmp_path / "d" / "b" / "notes.txt", "hello")
    with pytest.raises(DataError, match=r"notes\.txt is not an image file"):
        tk.load_data(tmp_path / "d")


def test_corrupt_jpeg_error_names_the_file(tmp_path):
    bad = tmp_path / "d" / "a" / "broken.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    _png(tmp_path / "d" / "b" / "ok.png")
    data = tk.load_data(tmp_path / "d")  # listing does not decode
    assert str(bad) in data.inputs
    with pytest.raises(DataError, match=r"Cannot read image .*broken\.jpg") as e:
        decode_image(bad, 8)
    assert str(bad) in str(e.value)


def test_text_file_named_png(tmp_path):
    fake = _write(tmp_path / "fake.png", "I am not a picture\n")
    with pytest.raises(DataError, match=r"fake\.png"):
        decode_images([str(fake)], 8)


def test_missing_image_file(tmp_path):
    with pytest.raises(DataError, match=r"gone\.png does not exist"):
        open_rgb(tmp_path / "gone.png")


def test_missing_label_column_lists_columns(tmp_path):
    manifest = _write(tmp_path / "m.csv", "text,species\na,x\nb,y\n")
    with pytest.raises(DataError, match=r"m\.csv has no label column \(columns: text, species\)") as e:
        tk.load_data(manifest)
    assert "--label-column" in e.value.fix


def test_misspelt_label_column_names_it_and_lists_columns(tmp_path):
    manifest = _write(tmp_path / "m.csv", "text,species\na,x\nb,y\n")
    with pytest.raises(DataError, match=r"m\.csv has no column 'specise' \(columns: text, species\)") as e:
        tk.load_data(manifest, label_column="specise")
    assert "--label-column" in e.value.fix
    assert tk.load_data(manifest, label_column="species").label_names == ["x", "y"]


def test_misspelt_text_column(tmp_path):
    manifest = _write(tmp_path / "m.csv", "text,label\na,x\nb,y\n")
    with pytest.raises(DataError, match="no column 'txt'") as e:
        tk.load_data(manifest, text_column="txt")
    assert "--text-column" in e.value.fix


def test_manifest_without_input_column(tmp_path):
    manifest = _write(tmp_path / "m.csv", "id,label\n1,x\n2,y\n")
    with pytest.raises(DataError, match=r"no image-path or text column \(columns: id, label\)"):
        tk.load_data(manifest)


def test_nonexistent_path_in_manifest(tmp_path):
    _png(tmp_path / "imgs" / "ok.png")
    manifest = _write(tmp_path / "m.csv", "path,label\nimgs/ok.png,a\nimgs/typo.png,b\n")
    with pytest.raises(DataError, match=r"m\.csv row 3: image .*typo\.png does not exist"):
        tk.load_data(manifest)


def test_empty_text(tmp_path):
    manifest = _write(tmp_path / "m.csv", 'text,label\nhello,a\n"   ",b\n')
    with pytest.raises(DataError, match=r"m\.csv row 3: empty text in column 'text'"):
        tk.load_data(manifest)


def test_empty_label(tmp_path):
    manifest = _write(tmp_path / "m.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": ""}\n')
    with pytest.raises(DataError, match=r"m\.jsonl row 2: empty value in label column 'label'"):
        tk.load_data(manifest)


def test_manifest_without_rows(tmp_path):
    with pytest.raises(DataError, match="has no rows"):
        tk.load_data(_write(tmp_path / "m.csv", "text,label\n"))


def test_invalid_jsonl_line_names_the_line(tmp_path):
    manifest = _write(tmp_path / "m.jsonl", '{"text": "a", "label": "x"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"m\.jsonl:2 is not valid JSON"):
        tk.load_data(manifest)
    with pytest.raises(DataError, match=r"a\.jsonl:1 is not a JSON object"):
        tk.load_data(_write(tmp_path / "a.jsonl", '["a", "x"]\n'))


def test_non_utf8_manifest(tmp_path):
    manifest = tmp_path / "latin.csv"
    manifest.write_bytes("text,label\ncaf\xe9,a\nthé,b\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv is not UTF-8"):
        tk.load_data(manifest)


def test_unsupported_file_type(tmp_path):
    with pytest.raises(DataError, match=r"data\.xlsx is neither a folder nor"):
        tk.load_data(_write(tmp_path / "data.xlsx", "x"))


def test_unknown_task(tmp_path):
    with pytest.raises(ConfigError, match="Unknown task 'segmentation'"):
        tk.load_data(tmp_path, task="segmentation")


def test_labels_unknown_to_a_trained_model(tmp_path):
    manifest = _write(tmp_path / "m.csv", "text,label\na,x\nb,z\n")
    with pytest.raises(DataError, match=r"\['z'\] are not among the training labels"):
        tk.load_data(manifest, label_names=["x", "y"])
