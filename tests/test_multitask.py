"""Multi-task learning: masked losses, gradients from every head, two tasks after reload, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from transferkit.cli import main
from transferkit.data import load_data
from transferkit.multitask import MultiTaskHead, multitask_metrics, multitask_spec

pytestmark = pytest.mark.usefixtures("tk_cache")

TASKS = [{"name": "shape", "task": "classification", "label_names": ["a", "b", "c"]},
         {"name": "size", "task": "regression", "label_names": ["size"]}]


def _head(weighting="fixed", weights=None):
    torch.manual_seed(0)
    return MultiTaskHead(multitask_spec(6, TASKS, 0.0, weighting, weights))


def test_masked_rows_contribute_no_loss():
    head = _head()
    out = torch.randn(4, 4, requires_grad=True)  # 3 logits + 1 value per row
    target = torch.tensor([[0, 1.5], [2, float("nan")], [float("nan"), -0.5], [1, 0.2]])
    loss = head.loss(out, target)
    expected = (torch.nn.functional.cross_entropy(out[[0, 1, 3], :3], torch.tensor([0, 2, 1]))
                + torch.nn.functional.mse_loss(out[[0, 2, 3], 3:], target[[0, 2, 3], 1:]))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.all(out.grad[2, :3] == 0) and torch.all(out.grad[1, 3:] == 0)  # unlabelled: no gradient
    assert torch.all(out.grad[0] != 0)
    # a batch where one task has no label at all still trains the other
    only = head.loss(out.detach(), torch.tensor([[0, float("nan")], [1, float("nan")], [2, float("nan")], [0, float("nan")]]))
    torch.testing.assert_close(only, torch.nn.functional.cross_entropy(out.detach()[:, :3], torch.tensor([0, 1, 2, 0])))


def test_fixed_weights_and_uncertainty_weighting():
    out, target = torch.randn(5, 4), torch.tensor([[0, 1.0], [1, 2.0], [2, 0.0], [0, 1.0], [1, -1.0]])
    per = _head().task_losses(out, target)
    torch.testing.assert_close(_head("fixed", {"size": 0.25}).loss(out, target), per[0] + 0.25 * per[1])
    unc = _head("uncertainty")
    with torch.no_grad():
        unc.log_vars.copy_(torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(unc.loss(out, target), np.exp(-0.5) * per[0] + 0.5 + np.exp(1.0) * per[1] - 1.0)
    assert unc.log_vars.requires_grad and not _head().log_vars.requires_grad


def test_gradients_from_each_head_reach_the_shared_backbone():
    torch.manual_seed(0)
    backbone = torch.nn.Linear(5, 6)
    head = _head()
    x = torch.randn(8, 5)
    grads = []
    for target in (torch.tensor([[0, float("nan")]] * 8), torch.tensor([[float("nan"), 1.0]] * 8)):
        backbone.zero_grad()
        head.loss(head(backbone(x)), target).backward()
        grads.append(backbone.weight.grad.clone())
    assert all(g.abs().sum() > 0 for g in grads) and not torch.allclose(grads[0], grads[1])


def test_metrics_per_task_on_labelled_rows_only():
    outputs = np.array([[3.0, 0, 0, 1.0], [0, 3, 0, 2.0], [0, 0, 3, 9.0], [3, 0, 0, 4.0]])
    y = np.array([[0, 1.0], [1, 2.0], [np.nan, 3.0], [2, np.nan]])
    m = multitask_metrics(TASKS, y, outputs)
    assert m["tasks"]["shape"]["accuracy"] == pytest.approx(2 / 3) and m["tasks"]["shape"]["n"] == 3
    assert m["tasks"]["size"]["mse"] == pytest.approx(36 / 3) and m["tasks"]["size"]["n"] == 3
    assert m["mean_score"] == pytest.approx((2 / 3 + m["tasks"]["size"]["r2"]) / 2)


def _manifest(folder, rng_seed=0):
    """An image manifest with a class task ('shape') and a regression task ('hue'); some cells empty."""
    rows = ["image,shape,hue"]
    rng = np.random.default_rng(rng_seed)
    for i, f in enumerate(sorted(folder.rglob("*.png"))):
        hue = {"circle": 0.9, "square": 0.3, "triangle": 0.1}[f.parent.name] + rng.normal(0, 0.01)
        shape = "" if i % 5 == 1 else f.parent.name
        rows.append(f"{f},{shape},{'' if i % 7 == 3 else f'{hue:.3f}'}")
    path = folder.parent / "multi.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_two_task_model_trains_predicts_both_and_reloads(make_image_folder, tiny_timm_weights, tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.setenv("COLUMNS", "250")
    manifest = _manifest(make_image_folder(n=8))
    data = load_data(str(manifest), tasks="shape,hue:regression")
    assert data.task == "multitask" and [t["name"] for t in data.tasks] == ["shape", "hue"]
    assert np.isnan(data.targets[:, 0]).sum() == 5 and np.isnan(data.targets[:, 1]).sum() == 3
    out = tmp_path / "run"
    rc = main(["fit", str(manifest), "--tasks", "shape,hue:regression", "--strategy", "multitask", "--backbone", "timm/test_efficientnet",
               "--backbone-weights", str(tiny_timm_weights), "--image-size", "32", "--epochs", "2", "--batch-size", "8",
               "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0 and "test shape" in printed and "test hue" in printed
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert set(history[-1]["val_tasks"]) == {"shape", "hue"}
    from transferkit import load

    model = load(out / "model")
    files = [str(p) for p in sorted(manifest.parent.rglob("*.png"))[:3]]
    preds = model.predict(files)
    assert set(preds[0]["tasks"]) == {"shape", "hue"} and "label" in preds[0]["tasks"]["shape"] and "value" in preds[0]["tasks"]["hue"]
    again = load(out / "model").predict(files)
    assert preds == again
    assert main(["predict", str(out / "model"), *files, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and set(lines[0]["tasks"]) == {"shape", "hue"}


def test_bad_multitask_options_are_one_clear_line(make_image_folder, tmp_path, capsys):
    manifest = _manifest(make_image_folder(n=4))
    cases = [
        (["--tasks", "shape"], "needs at least 2 label columns"),
        (["--tasks", "shape,hue:ranking"], "unknown task type 'ranking'"),
        (["--tasks", "shape,colour"], "no column 'colour'"),
        (["--tasks", "shape,hue:regression", "--mt-weights", "shape=heavy"], "is not NAME=NUMBER"),
    ]
    for args, message in cases:
        out = tmp_path / "never"
        rc = main(["fit", str(manifest), *args, "--strategy", "multitask", "--no-progress", "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not out.exists()
