"""Contract tests for every registered strategy, plus the specific guarantees of each one.

Tiny offline models only: timm's ``test_efficientnet`` (BatchNorm, 6 layer groups) with local
safetensors "pretrained" weights, and a 2-layer random BERT with the MiniLM tokenizer.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import transferkit
from transferkit import FitConfig, TaskData
from transferkit.training.optim import param_groups
from transferkit.errors import TransferkitError
from transferkit.training.callbacks.freezing import frozen_at_epoch
from transferkit.strategies import STRATEGIES, get_strategy
from transferkit.strategies.base import make_backbone, new_model

pytest.importorskip("timm")

engine = importlib.import_module("transferkit.training.trainer")  # the training loop
STRATEGY_NAMES = STRATEGIES.names()
# the contract below is for strategies that train one model on one label column with one backbone;
# multitask (several label columns) and stack (several backbones) have their own tests
CONTRACT_NAMES = [n for n in STRATEGY_NAMES if n not in ("multitask", "stack")]
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".joblib"}
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
TEXTS = {
    "pos": ["good great film", "wonderful happy story", "great fun and good", "lovely good acting", "happy great ending", "good wonderful cast"],
    "neg": ["bad awful film", "terrible sad story", "awful boring and bad", "poor bad acting", "sad terrible ending", "bad awful cast"],
}


pytestmark = pytest.mark.usefixtures("one_thread", "tk_cache")

# ------------------------------------------------------------------ fixtures and helpers




def _write_images(root: Path, n_per_class: int, seed: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = np.clip(np.array(colour) + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr, "RGB").save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-images")
    return _write_images(root / "train", 8, seed=1), _write_images(root / "val", 4, seed=2)


@pytest.fixture
def image_data(image_dirs) -> tuple[TaskData, TaskData]:
    train_dir, val_dir = image_dirs
    train = transferkit.load_data(train_dir)
    val = transferkit.load_data(val_dir, label_names=train.label_names)
    return train, val


@pytest.fixture
def text_data() -> tuple[TaskData, TaskData]:
    names = sorted(TEXTS)
    inputs = [t for n in names for t in TEXTS[n]]
    targets = np.array([i for i, n in enumerate(names) for _ in TEXTS[n]], dtype=np.int64)
    full = TaskData(inputs, targets, names, "text", "classification", "memory")
    val_idx = [0, 1, 6, 7]
    train_idx = [i for i in range(len(full)) if i not in val_idx]
    return full.subset(train_idx), full.subset(val_idx)


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory) -> Path:
    """Seeded random weights of timm's test_efficientnet as a local "pretrained" safetensors file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1234)  # not the training seed: scratch must start elsewhere
    model = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path_factory.mktemp("pretrained") / "test_efficientnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def cfg(pretrained_file) -> FitConfig:
    return FitConfig(
        backbone="timm/test_efficientnet",
        backbone_weights=str(pretrained_file),
        image_size=32,
        epochs=2,
        batch_size=8,
        eval_batch_size=64,
        lr=3e-3,
        device="cpu",
        val_fraction=0.0,
        test_fraction=0.0,
    )


@pytest.fixture
def text_cfg(tiny_bert_dir) -> FitConfig:
    return FitConfig(backbone=str(tiny_bert_dir), epochs=1, batch_size=4, max_length=16, device="cpu",
                     val_fraction=0.0, test_fraction=0.0)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _file_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _group_index(backbone) -> dict[str, int]:
    """Parameter name -> layer group index."""
    return {name: i for i, names in enumerate(backbone.layer_groups()) for name in names}


def _bn_buffers(backbone) -> dict[str, int]:
    """BatchNorm buffer name (running_mean/var, num_batches_tracked) -> layer group of its module."""
    groups = _group_index(backbone)
    out = {}
    for mod_name, mod in backbone.named_modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            owner = {groups[f"{mod_name}.{p}"] for p, _ in mod.named_parameters(recurse=False)}
            assert len(owner) == 1, mod_name
            g = owner.pop()
            for b, _ in mod.named_buffers(recurse=False):
                out[f"{mod_name}.{b}"] = g
    assert out, "the tiny backbone must have BatchNorm layers for these tests to mean anything"
    return out


@pytest.fixture
def train_spy(monkeypatch):
    """Records, for each call of the training loop by a strategy, the model and its state at entry."""
    calls: list[dict] = []
    real = engine.train

    def spy(model, train_data, val_data, cfg, **kw):
        calls.append({"model": model, "cfg": cfg, "backbone": _state(model.backbone), "head": _state(model.head)})
        return real(model, train_data, val_data, cfg, **kw)

    for mod in ("finetune", "scratch"):
        monkeypatch.setattr(importlib.import_module(f"transferkit.strategies.{mod}"), "train", spy)
    return calls


def _fit(name: str, train: TaskData, val: TaskData | None, cfg: FitConfig):
    return get_strategy(name).fit(train, val, cfg.replace(strategy=name), progress=False)


def _assert_save_load_roundtrip(model, folder: Path, inputs: list[str]) -> None:
    before = model.predict_outputs(inputs, device="cpu")
    model.save(folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert "model.safetensors" in files and "config.json" in files, files
    assert not [f for f in files if Path(f).suffix in PICKLE_SUFFIXES], files
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        from transferkit.model import _recipe_state_keys

        # every weight, except those a backbone rebuilds from its recipe (a LoRA model's pretrained base)
        assert set(fh.keys()) == set(model.state_dict()) - _recipe_state_keys(model)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["strategy"] == model.strategy and saved["label_names"] == model.label_names

    loaded = transferkit.load(folder)
    assert type(loaded.backbone) is type(model.backbone)
    assert loaded.backbone.preprocess == model.backbone.preprocess
    ref = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k]), k
    after = loaded.predict_outputs(inputs, device="cpu")
    assert after.shape == before.shape == (len(inputs), len(model.label_names))
    np.testing.assert_allclose(after, before, atol=1e-6, rtol=0)


# ------------------------------------------------------------------ contract: every strategy
def test_registry_has_the_builtin_strategies():
    assert {"finetune", "linear-probe", "scratch"} <= set(STRATEGY_NAMES)
    assert [s["name"] for s in transferkit.list_strategies()] == STRATEGY_NAMES


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_strategy_trains_saves_and_reloads(name, image_data, cfg, tmp_path):
    train, val = image_data
    res = transferkit.fit(train, val_data=val, config=cfg.replace(strategy=name), progress=False)
    model = res.model
    assert model.strategy == name and model.task == "classification"
    assert not model.training
    assert 0.0 <= res.metrics["val"]["accuracy"] <= 1.0 and res.metrics["val"]["n"] == len(val)
    _assert_save_load_roundtrip(model, tmp_path / "model", train.inputs + val.inputs)


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_strategy_is_deterministic_for_a_seed(name, image_data, cfg):
    train, val = image_data
    a = _fit(name, train, val, cfg)
    torch.manual_seed(12345)  # global RNG state must not leak into the result
    b = _fit(name, train, val, cfg)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{name}: {k} differs between two runs with seed {cfg.seed}"


LABEL_CASES = [pytest.param(n, {}, id=n) for n in CONTRACT_NAMES]
if "head_init" in FitConfig.__dataclass_fields__:  # LP-FT: the probe head is fitted before training
    LABEL_CASES.append(pytest.param("finetune", {"head_init": "probe"}, id="finetune-probe-init"))


@pytest.mark.parametrize("name, extra", LABEL_CASES)
def test_labels_outside_the_head_are_refused_before_training(name, extra, image_data, cfg, monkeypatch):
    train, _ = image_data
    cfg = cfg.replace(**extra)

    def boom(*a, **k):
        raise AssertionError("training/feature extraction started before the labels were checked")

    monkeypatch.setattr(importlib.import_module("transferkit.inputs"), "make_batch", boom)
    monkeypatch.setattr(importlib.import_module("transferkit.strategies.linear_probe"), "extract_features", boom)
    for bad in (len(train.label_names), -1):
        targets = train.targets.copy()
        targets[3] = bad
        data = TaskData(list(train.inputs), targets, list(train.label_names), "image")
        with pytest.raises(TransferkitError, match="[Ll]abels? outside"):
            _fit(name, data, None, cfg)


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_text_strategy_trains_and_reloads(name, text_data, text_cfg, tmp_path):
    train, val = text_data
    model = _fit(name, train, val, text_cfg)
    assert model.backbone.modality == "text" and model.backbone.preprocess.max_length == 16
    _assert_save_load_roundtrip(model, tmp_path / "text-model", train.inputs + val.inputs)
    assert (tmp_path / "text-model" / "backbone" / "config.json").is_file()


def test_text_pooling_cls_and_mean_differ_and_persist(text_data, text_cfg, tmp_path):
    train, val = text_data
    feats = {}
    for pooling in ("mean", "cls"):
        bb = make_backbone(text_cfg.replace(pooling=pooling)).eval()
        assert bb.preprocess.pooling == pooling
        with torch.no_grad():
            feats[pooling] = bb(bb.tokenize(val.inputs))
        assert feats[pooling].shape == (len(val), bb.num_features)
    assert not torch.allclose(feats["mean"], feats["cls"], atol=1e-4)
    model = _fit("finetune", train, val, text_cfg.replace(pooling="cls"))
    model.save(tmp_path / "cls")
    assert transferkit.load(tmp_path / "cls").backbone.preprocess.pooling == "cls"


# ------------------------------------------------------------------ finetune
def test_finetune_freeze_keeps_first_groups_bit_for_bit(image_data, cfg, train_spy):
    train, val = image_data
    model = _fit("finetune", train, val, cfg.replace(freeze=2, patience=0))
    (call,) = train_spy
    assert call["model"] is model
    bb = model.backbone
    groups = _group_index(bb)
    assert max(groups.values()) >= 3
    after = _state(bb)
    for name, _ in bb.named_parameters():
        same = torch.equal(after[name], call["backbone"][name])
        if groups[name] < 2:
            assert same, f"frozen parameter {name} (group {groups[name]}) changed"
        else:
            assert not same, f"trainable parameter {name} (group {groups[name]}) did not change"
    for name, g in _bn_buffers(bb).items():
        same = torch.equal(after[name], call["backbone"][name])
        assert same == (g < 2), f"BatchNorm buffer {name} in group {g}: unchanged={same}"
    head = _state(model.head)
    for k, v in head.items():
        assert not torch.equal(v, call["head"][k]), f"head {k} did not change"
    # the returned model is usable for further training: nothing left frozen
    assert all(p.requires_grad for p in model.parameters())


def test_param_groups_layer_decay_and_no_decay(image_data, cfg):
    train, _ = image_data
    c = cfg.replace(lr=0.01, backbone_lr_ratio=0.1, layer_decay=0.5, weight_decay=0.05)
    model = new_model(make_backbone(c, pretrained=False), train, c, "finetune")
    n = len(model.backbone.layer_groups())
    groups = param_groups(model, c)
    base = [g["name"].removesuffix(".no_decay") for g in groups]
    assert list(dict.fromkeys(base)) == [f"backbone.{i}" for i in range(n)] + ["head"]
    lrs = {}
    for g in groups:
        b = g["name"].removesuffix(".no_decay")
        expected = c.lr if b == "head" else c.lr * c.backbone_lr_ratio * c.layer_decay ** (n - 1 - int(b.split(".")[1]))
        assert g["lr"] == pytest.approx(expected, rel=1e-12), g["name"]
        lrs.setdefault(b, g["lr"])
        if g["name"].endswith(".no_decay"):
            assert g["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in g["params"])
        else:
            assert g["weight_decay"] == c.weight_decay and all(p.ndim > 1 for p in g["params"])
    backbone_lrs = [lrs[f"backbone.{i}"] for i in range(n)]
    assert all(a < b for a, b in zip(backbone_lrs, backbone_lrs[1:])), backbone_lrs
    assert backbone_lrs[-1] == pytest.approx(c.lr * c.backbone_lr_ratio) and lrs["head"] == c.lr
    # every parameter is optimised exactly once
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    # without layer decay every backbone group gets the same rate
    flat = param_groups(model, c.replace(layer_decay=1.0))
    assert all(g["lr"] == pytest.approx(c.lr * c.backbone_lr_ratio) for g in flat if not g["name"].startswith("head"))


@pytest.mark.parametrize(
    "n, freeze, unfreeze, every, expected",
    [
        (5, 0, "none", 1, [0, 0, 0]),
        (5, 2, "none", 1, [2, 2, 2]),
        (5, 9, "none", 1, [5, 5, 5]),
        (5, 0, "gradual", 1, [5, 4, 3, 2, 1, 0, 0]),
        (5, 0, "gradual", 2, [5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0]),
        (5, 2, "gradual", 1, [5, 4, 3, 2, 2, 2]),
        (3, 7, "gradual", 1, [3, 3, 3]),
    ],
)
def test_frozen_at_epoch(n, freeze, unfreeze, every, expected):
    assert [frozen_at_epoch(e, n, freeze, unfreeze, every) for e in range(len(expected))] == expected


def test_gradual_unfreezing_history(image_data, cfg):
    train, _ = image_data
    n = len(make_backbone(cfg).layer_groups())
    model = _fit("finetune", train, None, cfg.replace(unfreeze="gradual", epochs=n + 1))
    frozen = [r["frozen_groups"] for r in model.info["history"] if "epoch" in r]
    assert frozen == list(range(n, -1, -1))


@pytest.mark.parametrize("epochs", [1, 2])
def test_gradual_unfreezing_trains_head_first(epochs, image_data, cfg, train_spy):
    """Epoch 0 trains the head only; epoch 1 adds exactly the last backbone group."""
    train, _ = image_data
    model = _fit("finetune", train, None, cfg.replace(unfreeze="gradual", epochs=epochs))
    (call,) = train_spy
    bb = model.backbone
    n = len(bb.layer_groups())
    trained = set(range(n - (epochs - 1), n))  # groups unfrozen at some epoch
    groups = _group_index(bb)
    after = _state(bb)
    for name, _ in bb.named_parameters():
        assert torch.equal(after[name], call["backbone"][name]) == (groups[name] not in trained), name
    for name, g in _bn_buffers(bb).items():
        assert torch.equal(after[name], call["backbone"][name]) == (g not in trained), name
    if epochs == 1:
        assert all(torch.equal(after[k], v) for k, v in call["backbone"].items())
    for k, v in _state(model.head).items():
        assert not torch.equal(v, call["head"][k]), f"head {k} did not change"


# ------------------------------------------------------------------ early stopping
def test_early_stopping_restores_best_weights(image_data, cfg):
    """Validation labels shifted by one class: learning the training set makes validation worse,
    so the best epoch is an early one and the final weights must be rolled back to it."""
    train, val = image_data
    shifted = TaskData(list(val.inputs), (val.targets + 1) % 3, list(val.label_names), "image")
    res = transferkit.fit(train, val_data=shifted, config=cfg.replace(epochs=6, patience=2, lr=5e-2), progress=False)
    history = res.history
    epochs = [r for r in history if "epoch" in r]
    best = history[-1]
    assert set(best) == {"best_epoch", "best_val_accuracy"}
    scores = [r["val_accuracy"] for r in epochs]
    assert best["best_val_accuracy"] == max(scores)
    assert best["best_epoch"] == 1 + scores.index(max(scores))
    assert len(epochs) == best["best_epoch"] + 2 < 6, "patience 2 stops the run two epochs after the best"
    assert scores[-1] < best["best_val_accuracy"], scores  # so restoring the best weights matters
    assert res.model.evaluate(shifted, device="cpu")["accuracy"] == best["best_val_accuracy"]
    assert res.metrics["val"]["accuracy"] == best["best_val_accuracy"]


def test_early_stopping_restores_the_state_of_the_best_epoch(image_data, cfg, monkeypatch):
    """Scripted validation scores: best at epoch 2, then two worse epochs stop the run."""
    train, val = image_data
    c = cfg.replace(epochs=8, patience=2)
    model = new_model(make_backbone(c), train, c, "finetune")
    scores = iter([0.2, 0.6, 0.4, 0.5, 0.9, 0.9, 0.9, 0.9])
    snapshots = []

    def scripted(task, y, out, names, tasks=None):
        snapshots.append(_state(model))
        return {"accuracy": next(scores)}

    monkeypatch.setattr(engine, "task_metrics", scripted)
    history = engine.train(model, train, val, c, progress=False)
    assert [r["epoch"] for r in history if "epoch" in r] == [1, 2, 3, 4]
    assert history[-1] == {"best_epoch": 2, "best_val_accuracy": 0.6}
    final = model.state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[3][k]) for k in final)


# ------------------------------------------------------------------ linear probe
def test_linear_probe_backbone_frozen_and_feature_cache(image_dirs, cfg, tmp_path, pretrained_file):
    train_dir, val_dir = image_dirs
    work = tmp_path / "train"
    shutil.copytree(train_dir, work)
    c = cfg.replace(strategy="linear-probe")

    def data():
        tr = transferkit.load_data(work)
        return tr, transferkit.load_data(val_dir, label_names=tr.label_names)

    first = _fit("linear-probe", *data(), c)
    assert first.info["feature_cache"] == {"computed": 2}
    pretrained = _file_state(pretrained_file)
    bb = first.backbone.state_dict()
    for k, v in bb.items():
        assert torch.equal(v, pretrained[k.removeprefix("model.")]), k

    second = _fit("linear-probe", *data(), c)
    assert second.info["feature_cache"] == {"cache_hit": 2}
    for k, v in first.head.state_dict().items():
        assert torch.equal(v, second.head.state_dict()[k]), k

    # one training image changes: its features are recomputed, the validation ones reused
    from PIL import Image

    victim = sorted((work / "red").iterdir())[0]
    Image.new("RGB", (32, 32), (0, 0, 0)).save(victim)
    third = _fit("linear-probe", *data(), c)
    assert third.info["feature_cache"] == {"computed": 1, "cache_hit": 1}


@pytest.mark.parametrize("head", ["logistic", "linear", "mlp"])
def test_linear_probe_heads_learn_the_colours(head, image_data, cfg):
    train, val = image_data
    model = _fit("linear-probe", train, val, cfg.replace(head=head))
    assert model.info["head_fit"]["kind"] == head
    assert model.evaluate(val, device="cpu")["accuracy"] >= 0.9
    assert model.head_spec["kind"] == ("mlp" if head == "mlp" else "linear")


def test_linear_probe_with_a_class_missing_from_training(image_data, cfg):
    """Three labels, training examples of only two: the head still maps each class to its own row."""
    train, val = image_data
    keep = [i for i, t in enumerate(train.targets) if t != 1]
    part = train.subset(keep)
    assert len(part.label_names) == 3 and set(part.targets.tolist()) == {0, 2}
    model = _fit("linear-probe", part, None, cfg)
    out = model.predict_outputs(part.inputs, device="cpu")
    assert out.shape == (len(part), 3)
    assert (out.argmax(1) == part.targets).all()


# ------------------------------------------------------------------ scratch
def test_scratch_is_random_init_and_trains_everything(image_data, cfg, train_spy, pretrained_file):
    train, val = image_data
    # freeze/unfreeze options are ignored: nothing pretrained to protect
    model = _fit("scratch", train, val, cfg.replace(freeze=3, unfreeze="gradual", patience=0))
    (call,) = train_spy
    assert call["cfg"].backbone_lr_ratio == 1.0 and call["cfg"].layer_decay == 1.0
    assert call["cfg"].freeze == 0 and call["cfg"].unfreeze == "none"
    pretrained = _file_state(pretrained_file)
    start = call["backbone"]
    weights = [k for k, v in start.items() if v.ndim > 1]
    assert weights
    for k in weights:
        assert not torch.equal(start[k], pretrained[k.removeprefix("model.")]), f"{k} equals the pretrained file"
    after = _state(model.backbone)
    for name, _ in model.backbone.named_parameters():
        assert not torch.equal(after[name], start[name]), f"{name} was not trained"
    for k, v in _state(model.head).items():
        assert not torch.equal(v, call["head"][k]), k
    groups = param_groups(model, call["cfg"])
    assert {g["lr"] for g in groups} == {cfg.lr}
