"""Run and model folders (issue 16): nothing that transferkit did not write is ever deleted or
replaced, an earlier run or model is replaced only with --overwrite, full disks and bad targets
are refused with one line before any work, and nothing half-written is left."""

from __future__ import annotations

import errno
import json
import shutil

import pytest

from transferkit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread", "tk_cache")


def tiny(weights, *extra):
    return ["--backbone", "timm/test_efficientnet", "--backbone-weights", str(weights), "--image-size", "32", "--epochs", "1",
            "--batch-size", "8", "--no-progress", "--patience", "0", *extra]


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.fixture
def data(make_image_folder):
    return make_image_folder(classes=("circle", "square"), n=6)


def test_user_folders_and_files_are_never_replaced(data, tiny_timm_weights, tmp_path, capsys):
    user = tmp_path / "D"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("precious")
    before = snapshot(user)
    query = str(next(data.rglob("*.png")))
    assert main(["fewshot", query, "--support", str(data), "--backbone", "timm/test_efficientnet", "--backbone-weights",
                 str(tiny_timm_weights), "--image-size", "32", "--save", str(user)]) == 2
    assert "not a transferkit model" in error_line(capsys) and snapshot(user) == before
    # ... even with --overwrite
    assert main(["fewshot", query, "--support", str(data), "--backbone", "timm/test_efficientnet", "--backbone-weights",
                 str(tiny_timm_weights), "--image-size", "32", "--save", str(user), "--overwrite"]) == 2
    assert "never deleted or replaced" in error_line(capsys) and snapshot(user) == before
    # a file at --save is refused (it was renamed to a hidden .NAME.old.PID)
    f = tmp_path / "model-file"
    f.write_text("mine")
    assert main(["fewshot", query, "--support", str(data), "--backbone", "timm/test_efficientnet", "--backbone-weights",
                 str(tiny_timm_weights), "--image-size", "32", "--save", str(f)]) == 2
    assert "is a file" in error_line(capsys) and f.read_text() == "mine" and not list(tmp_path.glob(".model-file*"))
    # fit --out P where P/model is a user folder: refused before training, P untouched
    p = tmp_path / "P"
    (p / "model").mkdir(parents=True)
    (p / "model" / "thesis.tex").write_text("x")
    before = snapshot(p)
    assert main(["fit", str(data), *tiny(tiny_timm_weights, "--out", str(p), "--overwrite")]) == 2
    assert "model/ (not a transferkit model folder)" in error_line(capsys) and snapshot(p) == before
    # --out at an existing file: refused before training
    assert main(["fit", str(data), *tiny(tiny_timm_weights, "--out", str(f))]) == 2
    assert "is a file" in error_line(capsys) and f.read_text() == "mine"


def test_an_existing_model_is_replaced_only_with_overwrite(data, tiny_timm_weights, tmp_path, capsys):
    save = tmp_path / "fs"
    args = ["fewshot", str(next(data.rglob("*.png"))), "--support", str(data), "--backbone", "timm/test_efficientnet",
            "--backbone-weights", str(tiny_timm_weights), "--image-size", "32", "--save", str(save)]
    assert main(args) == 0
    first = snapshot(save)
    capsys.readouterr()
    assert main(args) == 2
    assert "already holds a saved model" in error_line(capsys) and snapshot(save) == first
    assert main([*args, "--overwrite"]) == 0 and (save / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no hidden leftovers


def test_overwriting_a_run_leaves_no_stale_files(data, tiny_timm_weights, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["fit", str(data), *tiny(tiny_timm_weights, "--out", str(run), "--checkpoint-every", "1"), "--epochs", "2"]) == 0
    assert (run / "checkpoints").is_dir() and (run / "steps.jsonl").is_file()
    capsys.readouterr()
    assert main(["fit", str(data), *tiny(tiny_timm_weights, "--out", str(run), "--strategy", "linear-probe")]) == 2
    assert "--overwrite" in error_line(capsys)
    assert main(["fit", str(data), *tiny(tiny_timm_weights, "--out", str(run), "--strategy", "linear-probe", "--overwrite")]) == 0
    assert sorted(p.name for p in run.iterdir()) == [".lock", "model", "report.json", "run.json"]  # no finetune logs or checkpoints
    assert json.loads((run / "report.json").read_text())["fit_config"]["strategy"] == "linear-probe"


def test_a_run_that_fails_before_training_leaves_nothing(data, tiny_timm_weights, tmp_path, capsys):
    run = tmp_path / "run"
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\n")
    assert main(["fit", str(bad), *tiny(tiny_timm_weights, "--out", str(run))]) == 2
    assert not run.exists()


def test_full_disk_is_refused_before_training(data, tiny_timm_weights, tmp_path, capsys, monkeypatch):
    import transferkit.training.rundir as rundir

    real = shutil.disk_usage
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda p: real(p)._replace(free=10_000))
    run = tmp_path / "run"
    assert main(["fit", str(data), *tiny(tiny_timm_weights, "--out", str(run))]) == 74
    line = error_line(capsys)
    assert "Not enough free space" in line and str(run) in line
    assert not run.exists()


def test_disk_full_while_saving_names_the_path_and_leaves_no_temp(data, tiny_timm_weights, tmp_path, capsys, monkeypatch):
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_model", full)
    run = tmp_path / "run"
    assert main(["fit", str(data), *tiny(tiny_timm_weights, "--out", str(run), "--checkpoint-every", "1")]) == 74
    line = error_line(capsys)
    assert "No space left" in line and str(run / "model") in line
    assert not list(run.glob(".model*")) and not (run / "model").exists()
    assert json.loads((run / "run.json").read_text())["status"] == "failed"  # kept: it has a checkpoint to resume from
