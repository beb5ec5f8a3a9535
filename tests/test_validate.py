"""Bad data: ``validate_data`` / ``transferkit validate`` list every problem; ``fit`` stops before
training (``--on-bad-sample error``) or leaves unusable samples out (``skip``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import transferkit as tk
from transferkit.api import prepare_splits, screen_splits
from transferkit.cli import main
from transferkit.config import FitConfig
from transferkit.data import load_data, open_rgb
from transferkit.data.validate import Report, check_sample, screen, validate_data
from transferkit.errors import DataError

pytestmark = pytest.mark.usefixtures("tk_cache", "_wide_console")

TINY = ["--backbone", "timm/test_efficientnet", "--image-size", "32", "--epochs", "1", "--strategy", "linear-probe", "--no-progress"]
BAD = {"random.png": "unreadable", "zero.png": "empty_file", "text.jpg": "not_an_image", "trunc.jpg": "truncated"}
GOOD_ODD = ("cmyk.jpg", "gray16.png", "palette.png")


@pytest.fixture
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: no wrapped file names
    monkeypatch.delenv("FORCE_COLOR", raising=False)


@pytest.fixture
def bad_folder(tmp_path, make_image_folder) -> Path:
    """2 classes x 8 good PNGs, 3 unusual but good images, and one image of each bad kind (4 of 23)."""
    root = make_image_folder("data", classes=("circle", "square"), n=8)
    rng = np.random.default_rng(1)
    (root / "circle" / "zero.png").write_bytes(b"")
    (root / "circle" / "random.png").write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    (root / "square" / "text.jpg").write_text("<html><body>404 Not Found</body></html>\n")
    full = tmp_path / "full.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, quality=90)
    raw = full.read_bytes()
    (root / "square" / "trunc.jpg").write_bytes(raw[: len(raw) // 2])
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(root / "circle" / "cmyk.jpg", quality=100)
    Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)).save(root / "square" / "gray16.png")
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([12, 34, 56] + [0] * 765)
    pal.save(root / "square" / "palette.png")
    return root


def names_by_kind(problems) -> dict[str, str]:
    return {Path(p.path_or_text).name: p.kind for p in problems}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    return lines[0]


# ---------------------------------------------------------------- validate_data


def test_the_odd_but_good_images_load_as_rgb(bad_folder):
    assert Image.open(bad_folder / "square" / "gray16.png").mode == "I;16"
    assert Image.open(bad_folder / "square" / "palette.png").mode == "P"
    cmyk = np.asarray(open_rgb(bad_folder / "circle" / "cmyk.jpg"))
    assert cmyk.shape == (16, 16, 3) and cmyk[..., 0].min() > 200 and cmyk[..., 1:].max() < 60  # red
    assert np.asarray(open_rgb(bad_folder / "square" / "gray16.png")).min() == 255  # scaled, not clipped
    assert tuple(np.asarray(open_rgb(bad_folder / "square" / "palette.png"))[0, 0]) == (12, 34, 56)
    for name in GOOD_ODD:
        folder = "circle" if name == "cmyk.jpg" else "square"
        assert check_sample(str(bad_folder / folder / name), "image") is None


def test_validate_lists_exactly_the_bad_images_with_their_kinds(bad_folder):
    data = load_data(bad_folder, keep_bad_samples=True)
    report = validate_data(data)
    assert isinstance(report, Report)
    assert names_by_kind(report.errors) == BAD
    assert report.warnings == [] and not report.ok
    assert sorted(Path(data.inputs[i]).name for i in report.bad_indices("train")) == sorted(BAD)
    assert report.bad_indices("val") == []
    d = report.to_dict()
    assert d["errors"] == 4 and d["warnings"] == 0 and d["sizes"] == {"train": 23} and d["ok"] is False
    assert {p["kind"] for p in d["problems"]} == set(BAD.values())
    assert all(p["split"] == "train" and p["severity"] == "error" for p in d["problems"])
    assert "4 errors, 0 warnings in 23 train examples." == report.summary()


def test_text_file_named_jpg_is_reported_as_text(bad_folder):
    kind, message = check_sample(str(bad_folder / "square" / "text.jpg"), "image")
    assert kind == "not_an_image" and "text file" in message and "404 Not Found" in message


def test_validate_lists_every_missing_file_and_empty_text(tmp_path, make_image_folder):
    images = make_image_folder("imgs", classes=("circle", "square"), n=2)
    manifest = write(tmp_path / "m.csv", "path,label\nimgs/circle/00.png,a\nimgs/gone1.png,a\nimgs/square/00.png,b\nimgs/gone2.png,b\n,b\n")
    assert images.is_dir()
    with pytest.raises(DataError, match="gone1.png does not exist"):
        load_data(manifest)  # the strict default is unchanged
    report = validate_data(load_data(manifest, keep_bad_samples=True))
    assert [(p.kind, p.index) for p in report.errors] == [("missing_file", 1), ("missing_file", 3), ("missing_file", 4)]
    assert "gone1.png" in report.errors[0].message and "gone2.png" in report.errors[1].message

    texts = write(tmp_path / "t.csv", 'text,label\nhello,a\n"  ",a\nworld,b\n,b\nagain,a\n')
    report = validate_data(load_data(texts, keep_bad_samples=True))
    assert [(p.kind, p.index) for p in report.problems] == [("empty_text", 1), ("empty_text", 3)]
    assert report.bad_indices("train") == [1, 3]


def test_duplicates_across_and_within_splits_and_unknown_classes(tmp_path):
    train = load_data(write(tmp_path / "train.csv", "text,label\nred apple,fruit\ngreen pear,fruit\nblue car,vehicle\n"
                            "red apple,fruit\nold bus,vehicle\n"))
    val = load_data(write(tmp_path / "val.csv", "text,label\ngreen  pear,fruit\nfast boat,vehicle\nsmall cat,animal\nbig dog,animal\n"),
                    min_classes=1)
    test = load_data(write(tmp_path / "test.csv", "text,label\nfast boat,vehicle\nlong train,vehicle\n"), min_classes=1)
    report = validate_data(train, val, test)
    got = sorted((p.kind, p.split, p.index, p.severity) for p in report.problems)
    assert got == [
        ("duplicate", "train", 3, "warning"),  # "red apple" twice in train
        ("duplicate_across_splits", "test", 0, "error"),  # "fast boat" also in val
        ("duplicate_across_splits", "val", 0, "error"),  # "green pear" (spacing differs) also in train
        ("unknown_class", "val", None, "error"),
    ]
    unknown = next(p for p in report.problems if p.kind == "unknown_class")
    assert unknown.path_or_text == "animal" and "2 examples in val but none in train" in unknown.message
    assert report.bad_indices("val") == []  # duplicates are not unusable samples


def test_empty_class_folder_and_class_with_only_bad_images(tmp_path, make_image_folder):
    root = make_image_folder("d", classes=("circle", "square"), n=3)
    (root / "triangle").mkdir()
    (root / "zebra").mkdir()
    (root / "zebra" / "z.png").write_bytes(b"")
    report = validate_data(load_data(root, keep_bad_samples=True))
    classes = {p.path_or_text: p.message for p in report.problems if p.kind == "class_without_train_examples"}
    assert set(classes) == {"triangle", "zebra"}
    assert "empty folder" in classes["triangle"] and "all 1 are unusable" in classes["zebra"]


def test_duplicate_images_by_bytes(tmp_path, make_image_folder):
    root = make_image_folder("d", classes=("circle", "square"), n=3)
    (root / "square" / "copy.png").write_bytes((root / "circle" / "00.png").read_bytes())
    report = validate_data(load_data(root))
    assert [(p.kind, Path(p.path_or_text).name, p.severity) for p in report.problems] == [("duplicate", "copy.png", "warning")]
    assert report.ok


# ---------------------------------------------------------------- transferkit validate


def test_cli_validate_exit_1_and_prints_each_bad_file(bad_folder, capsys):
    rc = main(["validate", str(bad_folder)])
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    for name, kind in BAD.items():
        assert name in captured.out and kind in captured.out
    for name in GOOD_ODD:
        assert name not in captured.out
    assert "4 errors, 0 warnings in 23 train examples." in captured.out


def test_cli_validate_json_and_exit_0_with_only_warnings(tmp_path, make_image_folder, capsys):
    root = make_image_folder("d", classes=("circle", "square"), n=3)
    (root / "square" / "copy.png").write_bytes((root / "square" / "00.png").read_bytes())
    rc = main(["validate", str(root), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    d = json.loads(captured.out)
    assert d["ok"] is True and d["errors"] == 0 and d["warnings"] == 1
    assert d["problems"][0]["kind"] == "duplicate" and d["problems"][0]["path_or_text"].endswith("copy.png")


def test_cli_validate_lists_unknown_val_classes_instead_of_raising(tmp_path, capsys):
    train = write(tmp_path / "train.csv", "text,label\na b,x\nc d,y\ne f,x\n")
    val = write(tmp_path / "val.csv", "text,label\nc d,y\ng h,z\ni j,w\n")
    rc = main(["validate", str(train), "--val-data", str(val), "--json"])
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    d = json.loads(captured.out)
    assert sorted((p["kind"], p["path_or_text"]) for p in d["problems"]) == [
        ("duplicate_across_splits", "c d"), ("unknown_class", "w"), ("unknown_class", "z")]
    assert d["sizes"] == {"train": 3, "val": 3}


# ---------------------------------------------------------------- fit: --on-bad-sample


def test_fit_stops_before_training_at_the_first_bad_image(bad_folder, tmp_path, tiny_timm_weights, capsys):
    out = tmp_path / "run"
    rc = main(["fit", str(bad_folder), "--out", str(out), *TINY, "--backbone-weights", str(tiny_timm_weights)])
    captured = capsys.readouterr()
    assert rc == 2, captured.err
    line = one_line(captured.err)
    assert str(bad_folder / "circle" / "random.png") in line  # the first bad file in folder order
    assert f"transferkit validate {bad_folder}" in line and "--on-bad-sample skip" in line
    assert not out.exists()  # no run folder, no metrics.jsonl


def test_api_fit_checks_data_before_the_strategy_runs(bad_folder, monkeypatch):
    import transferkit.api as api

    class Spy:
        def fit(self, *args, **kwargs):
            raise AssertionError("training started")

    monkeypatch.setattr(api, "get_strategy", lambda name: Spy())
    with pytest.raises(DataError, match=r"random\.png") as e:
        tk.fit(bad_folder, backbone="timm/test_efficientnet")
    assert "--on-bad-sample skip" in e.value.fix
    # sets built by the caller are checked too
    data = load_data(bad_folder, keep_bad_samples=True)
    with pytest.raises(DataError, match=r"random\.png"):
        tk.fit(None, splits=(data, None, None), backbone="timm/test_efficientnet")


def test_fit_skip_trains_without_the_bad_images_and_reports_them(bad_folder, tmp_path, tiny_timm_weights, capsys):
    out = tmp_path / "run"
    rc = main(["fit", str(bad_folder), "--out", str(out), *TINY, "--backbone-weights", str(tiny_timm_weights),
               "--on-bad-sample", "skip", "--max-bad-fraction", "0.2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    warning = one_line(captured.err)
    assert warning.startswith("warning: left out 4 unusable samples")
    report = json.loads((out / "report.json").read_text())
    assert report["skipped_samples"]["count"] == 4
    assert sorted(Path(f).name for f in report["skipped_samples"]["files"]) == sorted(BAD)
    assert report["data"]["n_train"] + report["data"]["n_val"] + report["data"]["n_test"] == 19


def test_fit_skip_aborts_when_too_many_samples_are_bad(bad_folder, tmp_path, tiny_timm_weights, capsys):
    out = tmp_path / "run"
    rc = main(["fit", str(bad_folder), "--out", str(out), *TINY, "--backbone-weights", str(tiny_timm_weights),
               "--on-bad-sample", "skip"])
    captured = capsys.readouterr()
    assert rc == 2, captured.err
    line = one_line(captured.err)
    assert "4 of 23 examples" in line and "17.4%" in line and "--max-bad-fraction 0.05" in line
    assert not out.exists()


def test_prepare_splits_skip_lists_left_out_samples_and_is_not_repeated(tmp_path, monkeypatch):
    rows = ["text,label"] + [f"word {i},{'ab'[i % 2]}" for i in range(38)] + ['"   ",a', ",b"]
    manifest = write(tmp_path / "t.csv", "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"t\.csv row 40: empty text") as e:
        prepare_splits(manifest, cfg=FitConfig())
    assert f"transferkit validate {manifest}" in e.value.fix
    cfg = FitConfig(on_bad_sample="skip")
    train, val, test = prepare_splits(manifest, cfg=cfg)
    assert len(train) + len(val) + len(test) == 38
    assert train.skipped == [f"{manifest} row 40 (empty text)", f"{manifest} row 41 (empty text)"]  # row 1: the header
    assert val.skipped == [] and test.skipped == []
    assert all(x.strip() for part in (train, val, test) for x in part.inputs)
    import transferkit.data.validate as validate

    monkeypatch.setattr(validate, "check_sample", lambda *a, **k: pytest.fail("screened twice"))
    again = screen_splits(train, val, test, cfg)
    assert again[0] is train and again[0].skipped == train.skipped


def test_skip_refuses_to_drop_every_training_example_of_a_class(tmp_path, make_image_folder):
    root = make_image_folder("d", classes=("circle", "square"), n=4)
    (root / "triangle").mkdir()
    (root / "triangle" / "only.png").write_bytes(b"")
    data = load_data(root, keep_bad_samples=True)
    with pytest.raises(DataError, match="class 'triangle' has no training example left"):
        screen(data, "train", "skip", max_bad_fraction=0.5)
    val = screen(data, "val", "skip", max_bad_fraction=0.5)  # a val set may lose a class
    assert len(val) == 8 and [Path(f).name for f in val.skipped] == ["only.png"]


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_screening_of_unchanged_files_is_remembered_and_a_changed_file_is_checked_again(tk_cache, make_image_folder, monkeypatch, mode):
    """A later run on the very same image files does not decode them all again; any change in a
    file's bytes (here: it becomes a text file) is checked afresh."""
    import transferkit.data.validate as validate

    root = make_image_folder("d", classes=("circle", "square"), n=4)
    data = load_data(root, keep_bad_samples=True)
    calls = []
    real = validate.check_sample
    monkeypatch.setattr(validate, "check_sample", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    assert screen(data, "train", mode).skipped == []
    assert len(calls) == 8
    assert screen(data, "train", mode).skipped == [] and len(calls) == 8  # remembered: nothing decoded
    bad = root / "square" / "02.png"
    bad.write_text("<html>404</html>")
    if mode == "error":
        with pytest.raises(DataError, match="02.png is a text file"):
            screen(data, "train", mode, max_bad_fraction=0.5)
    else:
        assert screen(data, "train", mode, max_bad_fraction=0.5).skipped == [str(bad)]
    assert len(calls) > 8
