"""Domain adaptation: gradient reversal, the methods' losses, AdaBN, the label-free protocol, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_CLASSES, draw_tiny_image
from transferkit import FitConfig, TaskData
from transferkit.adapt import AdaptConfig, adapt, fit_adapted, hide_labels, list_methods
from transferkit.adapt.base import rampup
from transferkit.adapt.diagnostics import mean_entropy, proxy_a_distance, snd
from transferkit.adapt.methods.adabn import batchnorm_layers, recompute_batchnorm
from transferkit.adapt.methods.coral import coral_loss
from transferkit.adapt.methods.dann import reverse_gradient
from transferkit.adapt.methods.self_training import select_pseudo_labels
from transferkit.cli import main
from transferkit.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- small numerics
def test_gradient_reversal_negates_and_scales_gradients():
    torch.manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, dtype=torch.float64)
    f = lambda t: (torch.tanh(t @ w) ** 2).sum()  # noqa: E731
    (g_plain,) = torch.autograd.grad(f(x), x)
    (g_rev,) = torch.autograd.grad(f(reverse_gradient(x, 0.7)), x)
    torch.testing.assert_close(g_rev, -0.7 * g_plain)
    # the forward pass is the identity; the plain gradient agrees with finite differences
    torch.testing.assert_close(reverse_gradient(x, 0.7), x)
    eps, i, j = 1e-6, 2, 1
    xp, xm = x.detach().clone(), x.detach().clone()
    xp[i, j] += eps
    xm[i, j] -= eps
    assert abs((f(xp) - f(xm)).item() / (2 * eps) - g_plain[i, j].item()) < 1e-6


def test_rampup_schedule():
    assert rampup(0.0) == 0.0
    assert rampup(0.5) == pytest.approx(2 / (1 + np.exp(-5)) - 1)
    values = [rampup(p) for p in np.linspace(0, 1, 11)]
    assert all(a < b for a, b in zip(values, values[1:])) and values[-1] > 0.99


def test_coral_loss_by_hand():
    torch.manual_seed(0)
    s = torch.randn(50, 4, dtype=torch.float64)
    assert coral_loss(s, s + 3.0).item() == pytest.approx(0.0, abs=1e-12)  # a shift keeps the covariance
    t = s * torch.tensor([1.0, 2.0, 1.0, 1.0], dtype=torch.float64)  # column 1 scaled by 2
    cs = np.cov(s.numpy().T)
    ct = np.cov(t.numpy().T)
    assert coral_loss(s, t).item() == pytest.approx(((cs - ct) ** 2).sum() / (4 * 16))


def test_pseudo_labels_threshold_and_class_balance():
    probs = np.array([
        [0.95, 0.05], [0.60, 0.40], [0.55, 0.45], [0.52, 0.48],  # class 0: one confident
        [0.30, 0.70], [0.40, 0.60],  # class 1: none above 0.9
    ])
    mask, labels = select_pseudo_labels(probs, threshold=0.9, class_fraction=0.5)
    # class 0: the confident one + top half of 4 (2 samples); class 1: top half of 2 (1 sample)
    assert mask.tolist() == [True, True, False, False, True, False]
    assert labels.tolist() == [0, 0, 0, 0, 1, 1]
    mask, _ = select_pseudo_labels(probs, threshold=0.9, class_fraction=0.0)
    assert mask.tolist() == [True, False, False, False, False, False]


def test_snd_entropy_and_proxy_a_distance():
    rng = np.random.default_rng(0)
    one_hot = np.eye(3)[np.arange(60) % 3]
    assert mean_entropy(one_hot) == pytest.approx(0.0, abs=1e-9)
    assert mean_entropy(np.full((4, 4), 0.25)) == pytest.approx(np.log(4))
    # three tight clusters of 20: each sample's neighbourhood is its 19 cluster mates
    assert snd(one_hot) == pytest.approx(np.log(19), abs=1e-3)
    same = rng.normal(size=(400, 8))
    apart = rng.normal(size=(400, 8)) + 3.0
    assert proxy_a_distance(same[:200], same[200:]) < 0.4
    assert proxy_a_distance(same, apart) > 1.8


# ---------------------------------------------------------------- data: a colour/contrast shift
def _shifted(path: Path) -> None:
    """The target domain: the same drawings, darker, lower contrast and tinted."""
    from PIL import Image

    x = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
    x = 0.45 * x + np.array([80.0, 20.0, 0.0])
    Image.fromarray(x.clip(0, 255).astype(np.uint8)).save(path)


def _domain(root: Path, n: int, seed: int, shifted: bool) -> Path:
    rng = np.random.default_rng(seed)
    for cls in TINY_CLASSES:
        for i in range(n):
            p = draw_tiny_image(root / cls / f"{i:02d}.png", cls, rng, 32)
            if shifted:
                _shifted(p)
    return root


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    base = tmp_path_factory.mktemp("domains")
    return {
        "source": _domain(base / "source", 16, 0, False),
        "target": _domain(base / "target", 16, 1, True),
        "target_test": _domain(base / "target_test", 12, 2, True),
    }


def _tiny_cfg(weights: Path, **kw) -> FitConfig:
    base = dict(backbone="timm/test_efficientnet", backbone_weights=str(weights), image_size=32, epochs=6, batch_size=16,
                lr=1e-2, backbone_lr_ratio=1.0, device="cpu", test_fraction=0.0, patience=10, eval_batch_size=64)
    return FitConfig(**{**base, **kw})


def _target(domains) -> TaskData:
    from transferkit import load_data

    d = load_data(domains["target"])
    return hide_labels(d)


@pytest.fixture(scope="module")
def tiny_results(domains, tiny_timm_weights, tmp_path_factory):
    """Target-test accuracy of every method on the colour-shifted task (trained once per module)."""
    import os

    os.environ.setdefault("TRANSFERKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    from transferkit import load_data

    source = load_data(domains["source"])
    test = load_data(domains["target_test"], label_names=source.label_names)
    cfg = _tiny_cfg(tiny_timm_weights)
    scores = {}
    for method in ("source-only", "adabn", "dann", "coral", "self-training", "adabn+dann+self-training"):
        res = adapt(source, _target(domains), target_test=test, config=cfg, method=method, select="last",
                    baseline=False, diagnostics=False, progress=False)
        scores[method] = res.rows[0].target[0]
    return scores


@pytest.mark.parametrize("method", ["adabn", "dann", "coral", "self-training", "adabn+dann+self-training"])
def test_each_method_beats_source_only_on_a_colour_shift(tiny_results, method):
    assert tiny_results["source-only"] < 0.9, tiny_results  # the shift hurts
    assert tiny_results[method] >= tiny_results["source-only"] + 0.05, tiny_results


def test_recompute_batchnorm_sets_target_statistics(domains, tiny_timm_weights, tk_cache):
    from transferkit import load_data
    from transferkit.inputs import make_batch, prepare
    from transferkit.strategies.base import make_backbone, new_model

    data = load_data(domains["target"])
    cfg = _tiny_cfg(tiny_timm_weights)
    model = new_model(make_backbone(cfg), data, cfg, "test")
    prepared = prepare(model.backbone, data.inputs)
    first = batchnorm_layers(model.backbone)[0]
    seen = []
    hook = first.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    model.eval()
    with torch.no_grad():
        model.backbone(make_batch(model.backbone, prepared, list(range(len(data))), torch.device("cpu")))
    hook.remove()
    x = seen[0]
    assert recompute_batchnorm(model, prepared, torch.device("cpu"), batch_size=16) == len(batchnorm_layers(model.backbone))
    torch.testing.assert_close(first.running_mean, x.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    assert first.momentum == 0.1 and not model.training  # restored


# ---------------------------------------------------------------- protocol, API, CLI
def test_selection_never_reads_target_labels_and_logs_label_free_scores(domains, tiny_timm_weights, tk_cache):
    from transferkit import load_data

    source = load_data(domains["source"])
    cfg = _tiny_cfg(tiny_timm_weights, epochs=3)
    for select in ("snd", "source-val", "last"):
        model = fit_adapted(*tk_split(source, cfg), _target(domains), cfg, AdaptConfig(method="adabn+dann+self-training", select=select),
                            progress=False)
        hist = model.info["history"]
        epochs = [h for h in hist if "epoch" in h]
        assert all(np.isfinite(h["target_snd"]) and np.isfinite(h["target_entropy"]) for h in epochs)
        assert all(0 <= h["dann_domain_accuracy"] <= 1 for h in epochs)
        assert hist[-1]["selection"] == select
        if select == "last":
            assert hist[-1]["best_epoch"] == 3
        if select == "snd":
            best = max(epochs, key=lambda h: h["target_snd"])
            assert hist[-1]["best_epoch"] == best["epoch"]
        assert model.info["adaptation"]["pseudo_labels"]  # self-training took pseudo-labels


def tk_split(source, cfg):
    from transferkit.api import prepare_splits

    train, val, _ = prepare_splits(source, cfg=cfg)
    return train, val


def test_text_backbone_dann_and_coral(tiny_bert_dir, tk_cache):
    texts_a = [f"the {w} was great and fine" for w in ("film", "song", "book", "meal")] * 4
    texts_b = [f"the {w} was awful and bad" for w in ("film", "song", "book", "meal")] * 4
    source = TaskData(texts_a + texts_b, np.array([1] * 16 + [0] * 16), ["neg", "pos"], "text")
    target = hide_labels(TaskData([t.upper() for t in source.inputs], source.targets, source.label_names, "text"))
    cfg = FitConfig(backbone=str(tiny_bert_dir), epochs=2, batch_size=8, device="cpu", test_fraction=0.0)
    for method in ("dann", "coral", "self-training"):
        model = fit_adapted(*tk_split(source, cfg), target, cfg, AdaptConfig(method=method), progress=False)
        assert model.predict(["the film was great"])[0]["label"] in ("neg", "pos")
    with pytest.raises(ConfigError, match="no BatchNorm"):
        fit_adapted(*tk_split(source, cfg), target, cfg, AdaptConfig(method="adabn"), progress=False)


def test_bad_targets_are_refused(domains, tiny_timm_weights, tk_cache, tmp_path):
    from transferkit import load_data

    source = load_data(domains["source"])
    cfg = _tiny_cfg(tiny_timm_weights, epochs=1)
    odd = TaskData(["x.png"], np.array([-1]), ["circle", "hexagon"], "image")
    with pytest.raises(DataError, match="hexagon"):
        adapt(source, odd, config=cfg, progress=False)
    with pytest.raises(DataError, match="empty"):
        adapt(source, TaskData([], np.zeros(0, dtype=np.int64), [], "image"), config=cfg, progress=False)
    with pytest.raises(DataError, match="texts"):
        adapt(source, TaskData(["a text"], np.array([-1]), [], "text"), config=cfg, progress=False)
    with pytest.raises(ConfigError, match="Unknown adaptation method"):
        adapt(source, _target(domains), config=cfg, method="dan", progress=False)
    with pytest.raises(ConfigError):
        AdaptConfig(select="target-test")


def test_cli_adapt_saves_a_model_that_predicts_like_any_other(domains, tiny_timm_weights, tk_cache, tmp_path, capsys):
    from transferkit import load

    out = tmp_path / "run"
    rc = main(["adapt", "--source", str(domains["source"]), "--target", str(domains["target"]), "--target-test", str(domains["target_test"]),
               "--method", "adabn+dann", "--backbone", "timm/test_efficientnet", "--backbone-weights", str(tiny_timm_weights),
               "--image-size", "32", "--epochs", "2", "--batch-size", "16", "--device", "cpu", "--no-progress", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    shown = capsys.readouterr().out
    assert "source-only" in shown and "adabn+dann" in shown and "proxy A-distance" in shown
    report = json.loads((out / "report.json").read_text())
    assert [r["method"] for r in report["rows"]] == ["source-only", "adabn+dann"]
    assert 0 <= report["rows"][1]["target_mean"] <= 1 and report["n_target_test"] == 36
    assert set(report["proxy_a_distance"]) == {"pretrained", "source-only", "adabn+dann"}
    model = load(out)
    images = sorted(str(p) for p in domains["target_test"].rglob("*.png"))[:5]
    first = model.predict(images)
    again = load(out).predict(images)
    assert [r["label"] for r in first] == [r["label"] for r in again]
    assert model.info["adaptation"]["method"] == "adabn+dann"


def test_cli_adapt_bad_input_one_line_and_nothing_written(domains, tiny_timm_weights, tk_cache, tmp_path, capsys):
    weird = tmp_path / "weird"
    _domain(weird, 2, 3, True)
    (weird / "circle").rename(weird / "hexagon")
    out = tmp_path / "run"
    common = ["--backbone", "timm/test_efficientnet", "--backbone-weights", str(tiny_timm_weights), "--image-size", "32",
              "--epochs", "1", "--device", "cpu", "--no-progress", "--out", str(out)]
    rc = main(["adapt", "--source", str(domains["source"]), "--target", str(weird), *common])
    err = capsys.readouterr().err
    assert rc == 2 and "hexagon" in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["adapt", "--source", str(domains["source"]), "--target", str(empty), *common])
    err = capsys.readouterr().err
    assert rc == 2 and "contains no images" in err
    rc = main(["adapt", "--source", str(domains["source"]), "--target", str(domains["target"]), "--method", "adabn+nope", *common])
    assert rc == 2 and "nope" in capsys.readouterr().err
    assert not out.exists()


def test_hidden_labels_raise():
    d = hide_labels(TaskData(["a", "b"], np.array([0, 1]), ["x", "y"], "text", source="tgt"))
    with pytest.raises(RuntimeError, match="hidden"):
        d.targets
    assert d.inputs == ["a", "b"] and hide_labels(d).inputs == ["a", "b"]


def test_methods_are_listed():
    names = list_methods()
    assert {"source-only", "adabn", "dann", "coral", "self-training"} <= set(names)
    assert main(["adapt-methods"]) == 0


def test_load_unlabelled_forms(tmp_path, make_image_folder):
    from transferkit.data import load_unlabelled

    folder = make_image_folder("imgs", classes=("circle", "square"), n=2)
    d = load_unlabelled(folder)
    assert len(d) == 4 and d.label_names == ["circle", "square"] and d.modality == "image"
    loose = tmp_path / "loose"
    loose.mkdir()
    for i, p in enumerate(sorted(folder.rglob("*.png"))):
        (loose / f"{i}.png").write_bytes(p.read_bytes())
    assert len(load_unlabelled(loose)) == 4 and load_unlabelled(loose).label_names == []
    (tmp_path / "t.csv").write_text("text,other\nfirst review,1\nsecond review,2\n")
    d = load_unlabelled(tmp_path / "t.csv")
    assert d.inputs == ["first review", "second review"] and d.modality == "text" and d.label_names == []
    (tmp_path / "l.csv").write_text("text,label\nfirst,pos\nsecond,neg\n")
    assert load_unlabelled(tmp_path / "l.csv").label_names == ["neg", "pos"]
    (tmp_path / "t.txt").write_text("one\n\ntwo\n")
    assert load_unlabelled(tmp_path / "t.txt").inputs == ["one", "two"]
    with pytest.raises(DataError, match="does not exist"):
        load_unlabelled(tmp_path / "missing")


def test_dann_reversal_weight_ramps_up_over_training(domains, tiny_timm_weights, tk_cache):
    """The reversal weight follows 2/(1+exp(-10p))-1 with p the fraction of all steps done: low in the
    first of 10 epochs, rising every epoch (a bug once fed it the step number instead of p)."""
    from transferkit import load_data

    source = load_data(domains["source"])
    cfg = _tiny_cfg(tiny_timm_weights, epochs=10, patience=0)
    model = fit_adapted(*tk_split(source, cfg), _target(domains), cfg, AdaptConfig(method="dann", select="last"), progress=False)
    weights = [h["dann_reversal"] for h in model.info["history"] if "epoch" in h]
    assert len(weights) == 10
    assert weights[0] < 0.5, weights  # mean over epoch 1 (p in 0..0.1): about 0.24
    assert all(b > a for a, b in zip(weights, weights[1:])), weights
    assert weights[-1] > 0.99
