"""Runs that survive crashes: exact resume after SIGKILL/SIGTERM, atomic checkpoints, config drift,
non-finite losses, loaders that never execute pickles, corrupt files. CPU, tiny timm model."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit.training import checkpoint
from transferkit.cli import main
from transferkit.errors import ModelLoadError, TransferkitError

pytestmark = pytest.mark.usefixtures("one_thread", "tk_cache")
WORKER = Path(__file__).with_name("resume_worker.py")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from conftest import draw_tiny_image

    root = tmp_path_factory.mktemp("resume-data") / "images"
    rng = np.random.default_rng(0)
    for cls in ("circle", "square", "triangle"):
        for i in range(14):
            draw_tiny_image(root / cls / f"{i}.png", cls, rng)
    return root


def fit_args(images, weights, out, *extra):
    return ["fit", str(images), "--backbone", "timm/test_efficientnet", "--backbone-weights", str(weights), "--image-size", "32",
            "--epochs", "3", "--batch-size", "4", "--no-progress", "--patience", "0", "--out", str(out), *extra]


def run_worker(args, delay, env_cache):
    env = {**os.environ, "TRANSFERKIT_CACHE": str(env_cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WORKER), str(delay), "--", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(WORKER.parent))


def wait_for_steps(path: Path, k: int, proc, timeout=120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.is_file() and len(path.read_text().splitlines()) >= k:
            return
        if proc.poll() is not None:
            raise AssertionError(f"worker ended early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.01)
    raise AssertionError("worker too slow")


def weights_of(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(images, tiny_timm_weights, tmp_path_factory):
    """An uninterrupted run: final weights and per-step trace."""
    out = tmp_path_factory.mktemp("ref") / "run"
    cache = out.parent / "cache"
    p = run_worker(fit_args(images, tiny_timm_weights, out), 0.0, cache)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    return out, weights_of(out), (out / "steps.jsonl").read_text()


def assert_same_run(run: Path, reference):
    ref_dir, ref_weights, ref_steps = reference
    got = weights_of(run)
    assert set(got) == set(ref_weights)
    assert all(torch.equal(got[k], ref_weights[k]) for k in got), "final weights differ from the uninterrupted run"
    assert (run / "steps.jsonl").read_text() == ref_steps  # losses bit for bit and the order of samples seen


@pytest.mark.parametrize("kill_after", [3, 13])  # in epoch 1 and in epoch 2 (8 steps per epoch)
def test_sigkill_then_resume_is_bitwise_identical(images, tiny_timm_weights, tmp_path, reference, kill_after):
    run = tmp_path / "run"
    p = run_worker(fit_args(images, tiny_timm_weights, run, "--checkpoint-every", "1steps", "--keep-checkpoints", "2"), 0.05, tmp_path / "c")
    wait_for_steps(run / "steps.jsonl", kill_after + random.randint(0, 2), p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (run / "model").exists()
    assert main(fit_args(images, tiny_timm_weights, run)[:2] + ["--resume", str(run), "--no-progress"]) == 0
    assert_same_run(run, reference)


def test_sigterm_checkpoints_exits_75_and_resumes(images, tiny_timm_weights, tmp_path, reference):
    run = tmp_path / "run"
    p = run_worker(fit_args(images, tiny_timm_weights, run), 0.05, tmp_path / "c")  # no --checkpoint-every
    wait_for_steps(run / "steps.jsonl", 12, p)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 75
    assert checkpoint.find_latest(run) is not None
    assert main([*fit_args(images, tiny_timm_weights, run)[:2], "--resume", str(run), "--no-progress"]) == 0
    assert_same_run(run, reference)


def test_sigkill_while_writing_checkpoints_never_breaks_latest(images, tiny_timm_weights, tmp_path):
    run = tmp_path / "run"
    rng = random.Random(0)
    for trial in range(8):
        args = fit_args(images, tiny_timm_weights, run, "--checkpoint-every", "1steps")
        if trial:
            args = [*args[:2], "--resume", str(run), "--no-progress"]
        p = run_worker(args, 0.0, tmp_path / "c")
        time.sleep(2.5 + rng.random() * 1.5)  # imports take ~2 s; then a checkpoint every step
        p.send_signal(signal.SIGKILL)
        p.wait()
        if checkpoint.find_latest(run) is None:
            continue  # killed before the first checkpoint: nothing to resume yet
        ck = checkpoint.load(run)  # the newest complete checkpoint always loads
        assert ck.model_state() and "optimizer" in ck.tensors


def test_incomplete_or_corrupt_checkpoint_falls_back(images, tiny_timm_weights, tmp_path):
    run = tmp_path / "run"
    assert main(fit_args(images, tiny_timm_weights, run, "--checkpoint-every", "5steps", "--keep-checkpoints", "3")) == 0
    root = run / "checkpoints"
    names = sorted(p.name for p in root.glob("step-*"))
    assert (root / "latest").read_text() == names[-1]
    newest = root / names[-1]
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # one bit flip in the tensor data
    (newest / "model.safetensors").write_bytes(bytes(data))
    (root / ".step-99999999.tmp").mkdir()  # a write that was killed half way
    with pytest.warns(UserWarning, match="incomplete or corrupt"):
        assert checkpoint.find_latest(run).name == names[-2]


def test_resume_reports_config_drift(images, tiny_timm_weights, tmp_path):
    run = tmp_path / "run"
    assert main(fit_args(images, tiny_timm_weights, run, "--checkpoint-every", "1")) == 0
    with pytest.warns(UserWarning, match=r"lr: 0\.003 -> 0\.001"):
        assert main([*fit_args(images, tiny_timm_weights, run)[:2], "--resume", str(run), "--lr", "0.001", "--no-progress"]) == 0
    code = main([*fit_args(images, tiny_timm_weights, run)[:2], "--resume", str(run), "--image-size", "48", "--no-progress"])
    assert code == 2  # a refused option is bad input (it was exit 3, as a training failure, before issue 16)


def test_nan_at_step_k_stops_and_keeps_last_good_checkpoint(images, tiny_timm_weights, tmp_path, monkeypatch):
    import transferkit.training.trainer as trainer

    real = trainer.loss_function
    calls = {"n": 0}

    def poisoned(task, smoothing):
        fn = real(task, smoothing)

        def loss(out, target):
            calls["n"] += 1
            value = fn(out, target)
            return value * float("nan") if calls["n"] == 7 else value

        return loss

    monkeypatch.setattr(trainer, "loss_function", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TransferkitError, match=r"step 7 \(epoch 1, batch 7"):
        tk.fit(str(images), out=run, progress=False, **dict(backbone="timm/test_efficientnet", backbone_weights=str(tiny_timm_weights),
               image_size=32, epochs=2, batch_size=4, checkpoint_every="1steps", keep_checkpoints=10))
    ck = checkpoint.load(run)
    assert ck.state["step"] == 6
    assert all(torch.isfinite(v).all() for v in ck.model_state().values() if v.is_floating_point())
    assert not (run / "model").exists()

    calls["n"] = 0
    res = tk.fit(str(images), progress=False, backbone="timm/test_efficientnet", backbone_weights=str(tiny_timm_weights),
                 image_size=32, epochs=2, batch_size=4, on_nan="skip")
    assert res.history[0]["skipped_steps"] == 1


def test_same_seed_same_cpu_run_same_loss_trace(images, tiny_timm_weights, tmp_path):
    traces = []
    for name in ("a", "b"):
        assert main(fit_args(images, tiny_timm_weights, tmp_path / name)) == 0
        traces.append((tmp_path / name / "steps.jsonl").read_text())
    assert traces[0] == traces[1]
    assert len(traces[0].splitlines()) == 3 * 8  # 3 epochs x ceil(30 train images / 4)


class _Sentinel:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickles_are_never_executed(images, tiny_timm_weights, tmp_path, capsys):
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps({"x": _Sentinel(str(sentinel))})
    run = tmp_path / "run"
    assert main(fit_args(images, tiny_timm_weights, run, "--checkpoint-every", "1", "--epochs", "1")) == 0
    # resume: optimiser file replaced by a hostile pickle (checksum fixed up so only the unpickler stands guard)
    ck = checkpoint.find_latest(run)
    (ck / "optim.pt").write_bytes(payload)
    state = json.loads((ck / "state.json").read_text())
    from transferkit._cache import file_digest

    state["checksums"]["optim.pt"] = file_digest(ck / "optim.pt")
    (ck / "state.json").write_text(json.dumps(state))
    with pytest.raises(ModelLoadError):
        checkpoint.load(run)
    # predict: weights replaced by a pickle
    bad_model = tmp_path / "bad-model"
    shutil.copytree(run / "model", bad_model)
    (bad_model / "model.safetensors").write_bytes(payload)
    assert main(["predict", str(bad_model), str(next(images.rglob("*.png")))]) != 0
    # backbone file: a pickle named .pth or disguised as .safetensors
    for name in ("weights.pth", "weights.safetensors"):
        (tmp_path / name).write_bytes(payload)
        assert main(["fit", str(images), "--backbone", "timm/test_efficientnet", "--backbone-weights", str(tmp_path / name),
                     "--out", str(tmp_path / f"o-{name}")]) == 2
    assert not sentinel.exists()


@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_damaged_model_file_gives_a_clean_error(images, tiny_timm_weights, tmp_path, capsys, damage):
    run = tmp_path / "run"
    assert main(fit_args(images, tiny_timm_weights, run, "--epochs", "1", "--strategy", "linear-probe")) == 0
    f = run / "model" / "model.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["predict", str(run), str(next(images.rglob("*.png")))]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "Traceback" not in err


def test_out_of_memory_finder_keeps_the_effective_batch(images, tiny_timm_weights, tmp_path, monkeypatch):
    from transferkit.backbones.timm_backbone import TimmBackbone

    real_forward = TimmBackbone.forward
    seen = []

    def forward(self, batch):
        if self.training:
            seen.append(batch.shape[0])
            if batch.shape[0] > 3:  # a fake GPU that fits 3 images at most
                raise torch.OutOfMemoryError("fake OOM")
        return real_forward(self, batch)

    monkeypatch.setattr(TimmBackbone, "forward", forward)
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="micro-batches of 4"):
        res = tk.fit(str(images), out=run, progress=False, backbone="timm/test_efficientnet", backbone_weights=str(tiny_timm_weights),
                     image_size=32, epochs=1, batch_size=16)
    assert res.history[0]["micro_batch_size"] == 2  # 16 -> 8 -> 4 -> 2 (the first size that fits)
    steps = (run / "steps.jsonl").read_text().splitlines()
    assert len(steps) == 2  # 30 training images in batches of 16: optimiser steps unchanged
    assert max(s for s in seen[3:]) <= 3
    assert sum(seen[3:]) == 30  # every sample seen exactly once after the size settled


# ---------------------------------------------------------------- issue 16: runs never mix, signals over the whole run
SIGNAL_WORKER = Path(__file__).with_name("signal_worker.py")


def run_signal_worker(where: str, k: int, args, env_cache):
    env = {**os.environ, "TRANSFERKIT_CACHE": str(env_cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SIGNAL_WORKER), where, str(k), "--", *args], env=env, capture_output=True,
                          text=True, cwd=str(SIGNAL_WORKER.parent), timeout=300)


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip() and "Warning" not in ln and not ln.startswith("  ")]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr[-2000:]
    return lines[0]


def test_an_old_run_never_hijacks_a_new_one(images, tiny_timm_weights, tmp_path, reference):
    """A finished run (seed 5, lr 0.001) in R, then a new run into R: refused without --overwrite;
    with it, the old checkpoints and logs are gone, and a SIGKILL + resume ends exactly as an
    uninterrupted run with the new options (it once resumed the OLD run's checkpoints)."""
    run = tmp_path / "run"
    old = fit_args(images, tiny_timm_weights, run, "--checkpoint-every", "1steps", "--seed", "5", "--lr", "0.001")
    assert main(old) == 0
    before = (run / "model" / "model.safetensors").read_bytes()
    assert main(fit_args(images, tiny_timm_weights, run)) == 2  # refused before any work
    assert (run / "model" / "model.safetensors").read_bytes() == before
    p = run_worker(fit_args(images, tiny_timm_weights, run, "--checkpoint-every", "1steps", "--overwrite"), 0.05, tmp_path / "c")
    t0 = time.time()
    while not (run / "run.json").is_file() or json.loads((run / "run.json").read_text()).get("pid") != p.pid:
        assert time.time() - t0 < 120 and p.poll() is None, "the new run never started"
        time.sleep(0.01)  # the old run's logs are still there until the new run begins
    wait_for_steps(run / "steps.jsonl", 10, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (run / "model").exists()  # the old model went with the old run
    steps = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
    assert steps and max(steps) < 24  # only the new run's checkpoints (the old run ended at step 24)
    assert main([*fit_args(images, tiny_timm_weights, run)[:2], "--resume", str(run), "--no-progress"]) == 0
    assert_same_run(run, reference)  # the reference: seed 0, lr 0.003, uninterrupted
    report = json.loads((run / "report.json").read_text())
    assert report["fit_config"]["seed"] == 0 and report["fit_config"]["lr"] == 0.003
    assert json.loads((run / "run.json").read_text())["status"] == "done"


def test_a_second_run_into_a_busy_folder_is_refused(images, tiny_timm_weights, tmp_path, capsys):
    run = tmp_path / "run"
    p = run_worker(fit_args(images, tiny_timm_weights, run, "--checkpoint-every", "1steps"), 0.05, tmp_path / "c")
    wait_for_steps(run / "steps.jsonl", 2, p)
    capsys.readouterr()
    for args in (fit_args(images, tiny_timm_weights, run, "--overwrite"), [*fit_args(images, tiny_timm_weights, run)[:2], "--resume", str(run)]):
        assert main(args) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "in use by another transferkit run" in line and f"pid {p.pid}" in line
    p.send_signal(signal.SIGKILL)
    p.wait()
    # the kernel released the dead run's lock: nothing stale stands in the way of resuming it
    assert main([*fit_args(images, tiny_timm_weights, run)[:2], "--resume", str(run), "--no-progress"]) == 0


def test_sigterm_while_loading_data_exits_75_and_writes_nothing(images, tiny_timm_weights, tmp_path):
    run = tmp_path / "run"
    res = run_signal_worker("load", 1, fit_args(images, tiny_timm_weights, run), tmp_path / "c")
    assert res.returncode == 75, res.stderr[-2000:]
    assert "before training started" in one_error_line(res.stderr)
    assert not run.exists()


@pytest.mark.parametrize("where,k", [("val", 3), ("evaluate", 1)])  # the last epoch's validation; the final evaluation
def test_sigterm_after_training_saves_the_model_first(images, tiny_timm_weights, tmp_path, reference, where, k):
    run = tmp_path / "run"
    res = run_signal_worker(where, k, fit_args(images, tiny_timm_weights, run), tmp_path / "c")
    assert res.returncode == 75, res.stderr[-2000:]
    line = one_error_line(res.stderr)
    assert "after training" in line and "model was saved" in line
    assert_same_run(run, reference)  # the model is the finished run's
    report = json.loads((run / "report.json").read_text())
    assert ("test" not in report["metrics"]) and ("val" in report["metrics"]) == (where == "evaluate")
    assert json.loads((run / "run.json").read_text())["status"] == "preempted"


def test_sigterm_during_validation_checkpoints_at_the_epoch_boundary(images, tiny_timm_weights, tmp_path, reference):
    run = tmp_path / "run"
    res = run_signal_worker("val", 1, fit_args(images, tiny_timm_weights, run), tmp_path / "c")  # epoch 1's validation
    assert res.returncode == 75, res.stderr[-2000:]
    assert "after epoch 1" in one_error_line(res.stderr)
    assert checkpoint.load(run).state["epoch"] == 1 and not (run / "model").exists()
    assert main([*fit_args(images, tiny_timm_weights, run)[:2], "--resume", str(run), "--no-progress"]) == 0
    assert_same_run(run, reference)


def test_unreadable_checkpoint_with_a_matching_checksum_falls_back(images, tiny_timm_weights, tmp_path, reference):
    """model.safetensors replaced by bytes that are not safetensors, its checksum updated: resume
    warns, takes the checkpoint before it, and still ends bit-for-bit as the uninterrupted run."""
    from transferkit._cache import file_digest

    run = tmp_path / "run"
    p = run_worker(fit_args(images, tiny_timm_weights, run, "--checkpoint-every", "1steps", "--keep-checkpoints", "3"), 0.05, tmp_path / "c")
    wait_for_steps(run / "steps.jsonl", 12, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    newest = checkpoint.find_latest(run)
    (newest / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    state = json.loads((newest / "state.json").read_text())
    state["checksums"]["model.safetensors"] = file_digest(newest / "model.safetensors")
    (newest / "state.json").write_text(json.dumps(state))
    with pytest.warns(UserWarning, match="falling back to the previous one"):
        ck = checkpoint.load(run)
    assert ck.path != newest
    with pytest.warns(UserWarning, match="falling back"):
        assert main([*fit_args(images, tiny_timm_weights, run)[:2], "--resume", str(run), "--no-progress"]) == 0
    assert_same_run(run, reference)


def test_resume_on_other_data_warns_and_a_new_label_set_is_refused(images, tiny_timm_weights, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(fit_args(images, tiny_timm_weights, run, "--checkpoint-every", "1")) == 0
    more = tmp_path / "more"
    shutil.copytree(images, more)
    for cls in ("circle", "square", "triangle"):  # same class names, twice the images
        for f in list((more / cls).glob("*.png")):
            shutil.copy(f, f.with_name("b" + f.name))
    with pytest.warns(UserWarning, match=r"n_train: 30 -> (?!30\b)\d+"):
        assert main(["fit", str(more), "--resume", str(run), "--no-progress"]) == 0
    other = tmp_path / "other"
    shutil.copytree(images, other)
    shutil.move(other / "triangle", other / "star")
    capsys.readouterr()
    assert main(["fit", str(other), "--resume", str(run), "--no-progress"]) == 2
    assert "labels" in one_error_line(capsys.readouterr().err)
