"""The command line: every command on tiny offline models, and one clear line for each bad input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.cli import main
from transferkit.errors import TransferkitError

pytestmark = pytest.mark.usefixtures("tk_cache", "_wide_console")

TINY = ["--backbone", "timm/test_efficientnet", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--no-progress"]
POSITIVE = ["great", "wonderful", "excellent", "lovely", "superb", "happy"]
NEGATIVE = ["awful", "terrible", "horrible", "dreadful", "bad", "sad"]


@pytest.fixture
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: no wrapped names
    monkeypatch.delenv("FORCE_COLOR", raising=False)


def tiny_image_args(weights: Path) -> list[str]:
    return [*TINY, "--backbone-weights", str(weights)]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run ``main`` capturing stdout/stderr (for module-scoped fixtures, where capsys is not available)."""
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        rc = main(argv)
    return rc, o.getvalue(), e.getvalue()


def write_text_data(folder: Path, n: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = ["text,label"]
    for i in range(n):
        for label, words in (("pos", POSITIVE), ("neg", NEGATIVE)):
            rows.append(f"{' '.join(rng.choice(words, 4))} film number {i},{label}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "reviews.csv").write_text("\n".join(rows) + "\n")
    return folder / "reviews.csv"


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    return lines[0]


# ---------------------------------------------------------------- a trained image model, shared


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, tiny_timm_weights):
    """``transferkit fit`` (linear probe) on 3 classes x 10 tiny images; returns (data, run dir, rc, stdout, stderr)."""
    from conftest import TINY_CLASSES, draw_tiny_image

    root = tmp_path_factory.mktemp("cli-images")
    data = root / "images"
    rng = np.random.default_rng(0)
    for cls in TINY_CLASSES:
        for i in range(10):
            draw_tiny_image(data / cls / f"{i:02d}.png", cls, rng)
    out = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFERKIT_CACHE", str(root / "cache"))
        mp.setenv("COLUMNS", "250")
        rc, stdout, stderr = run_cli(["fit", str(data), "--out", str(out), "--strategy", "linear-probe", *tiny_image_args(tiny_timm_weights)])
    return data, out, rc, stdout, stderr


def test_fit_saves_a_model_and_prints_metrics(image_run):
    data, out, rc, stdout, stderr = image_run
    assert rc == 0, stderr
    assert (out / "model" / "config.json").is_file() and (out / "model" / "model.safetensors").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["n_train"] + report["data"]["n_val"] + report["data"]["n_test"] == 30
    assert report["fit_config"]["strategy"] == "linear-probe" and report["fit_config"]["image_size"] == 32
    assert "linear-probe on timm/test_efficientnet" in " ".join(stdout.split())  # the title wraps to the table width
    assert "val" in stdout and "test" in stdout and "accuracy" in stdout
    assert f"Model saved to {out / 'model'}" in stdout
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["label_names"] == ["circle", "square", "triangle"]


def test_predict_json(image_run, capsys):
    data, out, *_ = image_run
    files = [data / "circle" / "00.png", data / "triangle" / "03.png"]
    rc = main(["predict", str(out), *map(str, files), str(data / "square"), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    results = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    assert [r["input"] for r in results] == [str(f) for f in files] + [str(p) for p in sorted((data / "square").glob("*.png"))]
    for r in results:
        probs = r["probabilities"]
        assert set(probs) == {"circle", "square", "triangle"}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
        assert r["label"] == max(probs, key=probs.get)
    # the linear probe separates these colours: most predictions match the class folder
    right = sum(r["label"] == Path(r["input"]).parent.name for r in results)
    assert right >= 0.8 * len(results)


def test_predict_top_k(image_run, capsys):
    data, out, *_ = image_run
    assert main(["predict", str(out / "model"), str(data / "circle" / "01.png"), "--json", "--top-k", "1"]) == 0
    (r,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert list(r["probabilities"]) == [r["label"]]


def test_predict_table(image_run, capsys):
    data, out, *_ = image_run
    rc = main(["predict", str(out), str(data / "circle" / "00.png"), str(data / "square" / "00.png")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    rows = [ln for ln in captured.out.splitlines() if "00.png" in ln]
    assert len(rows) == 2  # one row per input, the file name visible even for a long path
    for row in rows:
        assert any(name in row for name in ("circle", "square", "triangle"))
        assert row.count("0.") >= 3  # three probabilities


def test_evaluate_json(image_run, capsys):
    data, out, *_ = image_run
    rc = main(["evaluate", str(out), str(data), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    m = json.loads(captured.out)
    assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["macro_f1"] <= 1.0
    assert m["n"] == 30
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 30 and cm.sum(1).tolist() == [10, 10, 10]
    assert m["accuracy"] == pytest.approx(np.trace(cm) / 30)
    assert m["accuracy"] >= 0.8
    assert set(m["per_class"]) == {"circle", "square", "triangle"}


def test_evaluate_manifest_maps_labels_by_name(image_run, tmp_path, capsys):
    """A manifest with a subset of the classes, listed in another order, is scored with the model's labels."""
    data, out, *_ = image_run
    rows = ["image,label"] + [f"{data / 'triangle' / f'{i:02d}.png'},triangle" for i in range(4)]
    rows += [f"{data / 'circle' / f'{i:02d}.png'},circle" for i in range(2)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    assert main(["evaluate", str(out), str(tmp_path / "m.csv"), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum(1).tolist() == [2, 0, 4]  # rows: circle, square, triangle


def test_predict_missing_image_names_it(image_run, tmp_path, capsys):
    data, out, *_ = image_run
    rc = main(["predict", str(out), str(data / "circle" / "00.png"), str(tmp_path / "nope.png")])
    captured = capsys.readouterr()
    assert rc == 2 and "Traceback" not in captured.err
    assert str(tmp_path / "nope.png") in one_line(captured.err)


def test_evaluate_table(image_run, capsys):
    data, out, *_ = image_run
    assert main(["evaluate", str(out), str(data)]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "confusion matrix" in text and "per class" in text
    for name in ("0 circle", "1 square", "2 triangle"):
        assert name in text


# ---------------------------------------------------------------- the other commands


def test_fit_finetune_writes_epoch_log(tmp_path, make_image_folder, tiny_timm_weights, capsys):
    data = make_image_folder(classes=("circle", "square"), n=6)
    out = tmp_path / "run"
    rc = main(["fit", str(data), "--out", str(out), "--strategy", "finetune", "--unfreeze", "gradual", *tiny_image_args(tiny_timm_weights)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1]
    assert np.isfinite(log[0]["train_loss"])
    assert json.loads((out / "report.json").read_text())["fit_config"]["unfreeze"] == "gradual"


def test_models_lists_offline_backbones(capsys):
    assert main(["models"]) == 0
    rows = {ln.split("│")[1].strip(): ln for ln in capsys.readouterr().out.splitlines() if ln.count("│") >= 4}
    assert "yes" in rows["efficientnet_lite0"].split("│")[3]
    assert "yes" in rows["minilm"].split("│")[3]
    assert "text" in rows["minilm"] and "image" in rows["efficientnet_lite0"]
    assert "no (hub)" in rows["timm/<arch>"]


def test_strategies_lists_all(capsys):
    assert main(["strategies"]) == 0
    names = {ln.split("│")[1].strip() for ln in capsys.readouterr().out.splitlines() if ln.count("│") >= 3}
    assert {"linear-probe", "finetune", "scratch"} <= names


def test_help_and_no_arguments(capsys):
    assert main(["--help"]) == 0
    assert "quickstart" in capsys.readouterr().out
    assert main([]) != 0  # help, exit code 2 as click does, but no error line
    captured = capsys.readouterr()
    assert "Usage" in captured.out + captured.err and "error" not in captured.err


def test_fit_help_lists_config_options(capsys):
    assert main(["fit", "--help"]) == 0
    text = capsys.readouterr().out
    for opt in ("--backbone-weights", "--strategy", "--unfreeze", "--label-column", "--no-augment"):
        assert opt in text


def test_comparison_table_verdicts():
    from rich.console import Console

    from transferkit.api import CompareRow, Comparison
    from transferkit.cli import comparison_table

    cmp = Comparison([CompareRow("finetune", [0.9], [0.88], [2.0]), CompareRow("linear-probe", [0.52], [0.5], [1.0]),
                      CompareRow("scratch", [0.5], [0.45], [3.0])], "accuracy", "scratch", n_test=200)
    console = Console(width=250, record=True, file=io.StringIO())
    console.print(comparison_table(cmp, "t"))
    rows = {ln.split("│")[1].strip(): ln for ln in console.export_text().splitlines() if ln.count("│") >= 6}
    assert "+0.400" in rows["finetune"] and "transfer helps" in rows["finetune"]
    assert "NEGATIVE TRANSFER" in rows["linear-probe"]  # +0.02 is within the noise of 200 test examples
    assert "baseline" in rows["scratch"]


def test_compare_json(tmp_path, make_image_folder, tiny_timm_weights, capsys):
    data = make_image_folder(classes=("circle", "triangle"), n=8)
    rc = main(["compare", str(data), "--strategies", "linear-probe", "--json", *tiny_image_args(tiny_timm_weights)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    res = json.loads(captured.out.strip().splitlines()[-1])
    assert res["baseline"] == "scratch" and res["metric"] == "accuracy" and res["n_test"] >= 2
    rows = {r["strategy"]: r for r in res["rows"]}
    assert set(rows) == {"linear-probe", "scratch"}
    lp = rows["linear-probe"]
    assert {"gain", "noise", "negative_transfer"} <= set(lp) and "gain" not in rows["scratch"]
    assert lp["gain"] == pytest.approx(lp["mean"] - rows["scratch"]["mean"])
    assert isinstance(lp["negative_transfer"], bool)
    assert lp["negative_transfer"] == (lp["gain"] <= 2 * lp["noise"])
    for r in rows.values():
        assert 0.0 <= r["mean"] <= 1.0 and len(r["scores"]) == 1


def test_text_fit_and_predict_lines(tmp_path, tiny_bert_dir, capsys):
    manifest = write_text_data(tmp_path / "text")
    out = tmp_path / "text-run"
    rc = main(["fit", str(manifest), "--out", str(out), "--backbone", str(tiny_bert_dir), "--epochs", "1", "--batch-size", "8", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert (out / "model" / "backbone" / "config.json").is_file()  # the tokenizer/config travel with the model

    lines = tmp_path / "inputs.txt"
    lines.write_text("a wonderful lovely film\n\nan awful dreadful film\nsuperb\n")
    rc = main(["predict", str(out), str(lines), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    results = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["input"] for r in results] == ["a wonderful lovely film", "an awful dreadful film", "superb"]
    for r in results:
        assert set(r["probabilities"]) == {"neg", "pos"}
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)

    rc = main(["predict", str(out), "raw text given on the command line"])  # table for a raw text
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "raw text given on the command line" in captured.out

    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    rc = main(["predict", str(out), str(tmp_path / "photo.png")])  # an image for a text model
    assert rc == 2
    assert "takes text inputs but got images" in one_line(capsys.readouterr().err)


def test_predict_table_multilabel_without_any_label(tmp_path, tiny_bert_dir, capsys, monkeypatch):
    manifest = tmp_path / "ml.csv"
    manifest.write_text("text,labels\n" + "".join(f"t{i} {w},{lab}\n" for i, (w, lab) in enumerate(
        [("great", "a|b"), ("awful", "b"), ("fine", "a"), ("superb", "a|b"), ("bad", "b"), ("ok", "a")] * 2)))
    out = tmp_path / "ml-run"
    rc = main(["fit", str(manifest), "--out", str(out), "--task", "multilabel", "--strategy", "linear-probe",
               "--backbone", str(tiny_bert_dir), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()

    from transferkit.model import TransferModel

    monkeypatch.setattr(TransferModel, "predict", lambda self, items, **kw: [
        {"input": x, "labels": [], "probabilities": {"a": 0.1, "b": 0.2}} for x in items])
    rc = main(["predict", str(out), "some text"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "(none)" in captured.out


# ---------------------------------------------------------------- bad input: one line, no traceback, nothing written


def _bad_inputs(tmp_path: Path, make_image_folder, weights: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (argv, words the error line must contain)."""
    good = make_image_folder("good", classes=("circle", "square"), n=4)
    empty = tmp_path / "empty"
    empty.mkdir()
    single = make_image_folder("single", classes=("circle",), n=4)
    corrupt = make_image_folder("corrupt", classes=("circle", "square"), n=4)
    (corrupt / "square" / "zz-broken.jpg").write_bytes(os.urandom(1500))
    manifest = tmp_path / "m.csv"
    manifest.write_text("text,category\na,x\nb,y\n")
    notmodel = tmp_path / "notmodel"
    notmodel.mkdir()
    (notmodel / "readme.md").write_text("hi")
    img = tiny_image_args(weights)
    out = ["--out", str(tmp_path / "out")]
    return {
        "empty folder": (["fit", str(empty), *out, *img], [str(empty), "no class subfolders"]),
        "single class": (["fit", str(single), *out, *img], [str(single), "circle", "1 class"]),
        "corrupt image": (["fit", str(corrupt), *out, *img, "--strategy", "linear-probe"], [str(corrupt / "square" / "zz-broken.jpg")]),
        "misspelt label column": (["fit", str(manifest), *out, "--label-column", "categroy"], ["'categroy'", "category", "--label-column"]),
        "unknown backbone": (["fit", str(good), *out, "--backbone", "resnet9000"], ["'resnet9000'", "transferkit models"]),
        "unknown strategy": (["fit", str(good), *out, *img, "--strategy", "distill"], ["'distill'", "linear-probe"]),
        "invalid unfreeze": (["fit", str(good), *out, *img, "--unfreeze", "sometimes"], ["--unfreeze", "'sometimes'", "gradual"]),
        "predict on a non-model folder": (["predict", str(notmodel), str(good / "circle" / "00.png")], [str(notmodel), "not a transferkit model"]),
        "data path with brackets": (["fit", str(tmp_path / "data[v2]"), *out], [str(tmp_path / "data[v2]"), "does not exist"]),
        "unknown option": (["fit", str(good), *out, "--epoch", "1"], ["--epoch"]),
        "bad option value": (["fit", str(good), *out, "--epochs", "many"], ["--epochs"]),
        "zero epochs": (["fit", str(good), *out, "--epochs", "0"], ["--epochs"]),
        "--debug after the command": (["fit", str(good), *out, "--debug"], ["--debug"]),  # a usage error, no traceback
    }


BAD = ["empty folder", "single class", "corrupt image", "misspelt label column", "unknown backbone", "unknown strategy",
       "invalid unfreeze", "predict on a non-model folder", "data path with brackets",
       "unknown option", "bad option value", "zero epochs", "--debug after the command"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gives_one_clear_line(case, tmp_path, make_image_folder, tiny_timm_weights, capsys):
    argv, words = _bad_inputs(tmp_path, make_image_folder, tiny_timm_weights)[case]
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2, (rc, captured.err)
    line = one_line(captured.err)
    assert line.startswith("error: ") and "Fix:" in line
    for w in words:
        assert w in line, (w, line)
    assert "Traceback" not in captured.out + captured.err
    assert not (tmp_path / "out").exists()


def test_debug_raises_with_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TransferkitError, match="no class subfolders"):
        main(["--debug", "fit", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_console_script_one_line_and_debug_traceback(tmp_path):
    """The real entry point in a fresh process: one line without --debug, the traceback with it."""
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "TRANSFERKIT_CACHE": str(tmp_path / "cache"), "COLUMNS": "250"}
    cmd = [sys.executable, "-m", "transferkit.cli"]
    plain = subprocess.run([*cmd, "fit", str(tmp_path / "empty")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert plain.returncode == 2
    assert one_line(plain.stderr).startswith("error: Folder") and "Traceback" not in plain.stderr
    debug = subprocess.run([*cmd, "--debug", "fit", str(tmp_path / "empty")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "DataError" in debug.stderr
    assert not (tmp_path / "transferkit-run").exists()


def test_regression_comparison_respects_lower_is_better(tmp_path):
    """MSE is better when lower: a fine-tune with lower MSE than scratch is a positive gain, best, and
    not negative transfer, in the API, its dict and the CLI table (a bug once crowned the worst)."""
    from rich.console import Console

    from transferkit.api import CompareRow, Comparison
    from transferkit.cli import comparison_table

    rows = [CompareRow("finetune", [0.20, 0.22, 0.21], [float("nan")] * 3, [2.0] * 3),
            CompareRow("linear-probe", [0.95, 0.97, 0.96], [float("nan")] * 3, [1.0] * 3),
            CompareRow("scratch", [0.60, 0.62, 0.61], [float("nan")] * 3, [3.0] * 3)]
    cmp = Comparison(rows, "mse", "scratch", n_test=100, higher=False)
    assert cmp.gain("finetune") == pytest.approx(0.40)
    assert not cmp.negative_transfer("finetune")
    assert cmp.gain("linear-probe") == pytest.approx(-0.35) and cmp.negative_transfer("linear-probe")
    assert cmp.best() == "finetune"
    d = {r["strategy"]: r for r in cmp.to_dict()["rows"]}
    assert d["finetune"]["gain"] > 0 and not d["finetune"]["negative_transfer"] and cmp.to_dict()["higher_is_better"] is False
    console = Console(width=250, record=True, file=io.StringIO())
    console.print(comparison_table(cmp, "t"))
    text = {ln.split("│")[1].strip(): ln for ln in console.export_text().splitlines() if ln.count("│") >= 6}
    assert "+0.400" in text["finetune"] and "transfer helps" in text["finetune"]
    assert "NEGATIVE TRANSFER" in text["linear-probe"]


def test_compare_regression_end_to_end_direction(tmp_path, make_image_folder, tiny_timm_weights):
    """A real regression compare: the strategy reported best has the lowest test MSE."""
    from transferkit.api import compare

    data = make_image_folder(classes=("circle", "triangle"), n=10)
    rows = [("path", "y")] + [(str(p.relative_to(data)), str(1.0 if p.parent.name == "circle" else -1.0))
                              for p in sorted(data.rglob("*.png"))]
    (data / "reg.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    cmp = compare(data / "reg.csv", strategies=["linear-probe"], progress=False, loader={"label_column": "y", "task": "regression"},
                  backbone="timm/test_efficientnet", backbone_weights=str(tiny_timm_weights), image_size=32, epochs=2,
                  batch_size=8, device="cpu")
    assert cmp.metric == "mse" and cmp.higher is False
    means = {r.strategy: r.mean for r in cmp.rows}
    assert cmp.best() == min(means, key=means.get)
    assert cmp.gain("linear-probe") == pytest.approx(means["scratch"] - means["linear-probe"])
