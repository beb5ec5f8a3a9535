"""Backbone creation: local timm weights and folders, Hugging Face folders, refusals with a fix.

Tiny offline models only (timm's ``test_efficientnet``/``test_vit``, a 2-layer random BERT); the
real EfficientNet-Lite0 is only created for its preprocessing (one conversion, about a second).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import transferkit
from transferkit.backbones import create_backbone, list_backbones
from transferkit.errors import ConfigError, ModelLoadError

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread", "tk_cache")
from safetensors.torch import load_file, save_file  # noqa: E402






def _save_random(arch: str, path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("timm-weights")
    return {arch: _save_random(arch, root / f"{arch}.safetensors") for arch in ("test_efficientnet", "test_vit")}


def _assert_groups_partition(bb) -> list[list[str]]:
    groups = bb.layer_groups()
    names = [n for n, _ in bb.named_parameters()]
    flat = [n for g in groups for n in g]
    assert all(groups), "no empty layer group"
    assert len(flat) == len(set(flat)), "a parameter is in two groups"
    assert sorted(flat) == sorted(names), "every parameter is in exactly one group"
    return groups


def _block_order(groups: list[list[str]], pattern: str) -> list[int]:
    """For each group, the block indices its parameters belong to (must be non-decreasing)."""
    order = []
    for g in groups:
        idx = sorted({int(m.group(1)) for n in g if (m := re.search(pattern, n))})
        order.extend(idx)
    return order


# ------------------------------------------------------------------ timm, local weights
@pytest.mark.parametrize(
    "arch, size, stem, top",
    [
        ("test_efficientnet", 32, "model.conv_stem.weight", "model.conv_head.weight"),
        ("test_vit", None, "model.patch_embed.proj.weight", "model.norm.weight"),
    ],
)
def test_timm_local_weights(arch, size, stem, top, weights):
    bb = create_backbone(f"timm/{arch}", weights=weights[arch], image_size=size)
    assert bb.modality == "image" and bb.name == f"timm/{arch}"
    ref = timm.create_model(arch, pretrained=False, num_classes=0)
    assert bb.num_features == ref.num_features
    # the file's tensors are loaded (the classifier is dropped)
    file = load_file(str(weights[arch]))
    state = bb.state_dict()
    assert state, "no weights"
    for k, v in state.items():
        assert torch.equal(v, file[k.removeprefix("model.")]), k
    side = bb.preprocess.input_size
    assert side == (size or ref.pretrained_cfg["input_size"][-1])
    bb.eval()
    with torch.no_grad():
        feats = bb(torch.randn(3, 3, side, side))
    assert feats.shape == (3, bb.num_features) and torch.isfinite(feats).all()
    groups = _assert_groups_partition(bb)
    assert len(groups) >= 4
    assert stem in groups[0] and top in groups[-1]
    blocks = _block_order(groups, r"\.blocks\.(\d+)\.")
    assert blocks == sorted(blocks) and len(set(blocks)) >= 2


def test_timm_random_init_is_not_the_file(weights):
    bb = create_backbone("timm/test_efficientnet", pretrained=False, weights=weights["test_efficientnet"], image_size=32)
    file = load_file(str(weights["test_efficientnet"]))
    assert not torch.equal(bb.state_dict()["model.conv_stem.weight"], file["conv_stem.weight"])


def test_pth_weights_are_refused_without_unpickling(tmp_path, monkeypatch):
    path = tmp_path / "weights.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), path)

    def no_unpickling(*a, **k):
        raise AssertionError("torch.load was called on a user weights file")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ConfigError, match="safetensors") as err:
        create_backbone("timm/test_efficientnet", weights=path)
    assert "weights.pth" in str(err.value) and "save_file" in str(err.value)


def test_weights_of_another_architecture_are_refused(weights):
    with pytest.raises(ModelLoadError) as err:
        create_backbone("timm/test_efficientnet", weights=weights["test_vit"])
    msg = str(err.value)
    assert "missing" in msg and "unexpected" in msg and "test_efficientnet" in msg
    assert re.search(r"[1-9]\d* missing", msg) and re.search(r"[1-9]\d* unexpected", msg)


def test_weights_with_a_wrong_shape_are_refused(weights, tmp_path):
    state = load_file(str(weights["test_efficientnet"]))
    state["conv_stem.weight"] = torch.zeros(8, 3, 3, 3)  # 24 filters in the real model
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelLoadError, match=r"conv_stem\.weight"):
        create_backbone("timm/test_efficientnet", weights=path)


def test_unreadable_or_missing_weights(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00not a header")
    with pytest.raises(ModelLoadError, match="broken.safetensors"):
        create_backbone("timm/test_efficientnet", weights=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        create_backbone("timm/test_efficientnet", weights=tmp_path / "nope.safetensors")


def test_hub_weights_offline_say_how_to_use_a_local_file(monkeypatch):
    import os

    import huggingface_hub.constants

    assert os.environ["HF_HUB_OFFLINE"] == "1" and huggingface_hub.constants.HF_HUB_OFFLINE is True
    # the real timm path, offline: the hub is not contacted and the error says what to do instead
    with pytest.raises(ConfigError) as err:
        create_backbone("timm/test_efficientnet", pretrained=True)
    msg = str(err.value)
    assert "timm/test_efficientnet" in msg and "--backbone-weights" in msg and "weights=" in msg
    assert "efficientnet_lite0" in msg

    # any network failure inside timm (here an OSError) gives the same one-line error
    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("network unreachable")
        return real(name, pretrained=pretrained, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigError, match="--backbone-weights"):
        create_backbone("timm/test_efficientnet")


def test_unknown_names():
    with pytest.raises(ConfigError) as err:
        create_backbone("no_such_backbone")
    msg = str(err.value)
    for name in ("efficientnet_lite0", "minilm", "timm/<arch>", "hf/<name>"):
        assert name in msg
    with pytest.raises(ConfigError, match="no_such_arch"):
        create_backbone("timm/no_such_arch", pretrained=False)


def test_fixed_size_model_refuses_another_image_size():
    with pytest.raises(ConfigError, match="160"):
        create_backbone("timm/test_vit", pretrained=False, image_size=32)
    assert create_backbone("timm/test_vit", pretrained=False, image_size=160).preprocess.input_size == 160


def test_timm_hub_style_folder(weights, tmp_path):
    folder = tmp_path / "my-timm-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "test_efficientnet", "num_classes": 1000}))
    (folder / "model.safetensors").write_bytes(weights["test_efficientnet"].read_bytes())
    bb = create_backbone(str(folder), image_size=32)
    assert bb.arch == "test_efficientnet" and bb.name == "timm/test_efficientnet"
    file = load_file(str(weights["test_efficientnet"]))
    for k, v in bb.state_dict().items():
        assert torch.equal(v, file[k.removeprefix("model.")]), k
    assert bb.preprocess.input_size == 32


def test_saved_timm_recipe_keeps_preprocessing(weights):
    from transferkit.backbones import backbone_from_recipe

    bb = create_backbone("timm/test_efficientnet", weights=weights["test_efficientnet"], image_size=48)
    again = backbone_from_recipe(json.loads(json.dumps(bb.recipe())), Path("."))
    assert again.preprocess == bb.preprocess and again.preprocess.input_size == 48
    assert again.state_dict().keys() == bb.state_dict().keys()


# ------------------------------------------------------------------ Hugging Face text folder
def test_hf_tiny_folder(tiny_bert_dir):
    bb = create_backbone(str(tiny_bert_dir))
    assert bb.modality == "text" and bb.num_features == 32
    cfg = json.loads((Path(tiny_bert_dir) / "config.json").read_text())
    assert bb.preprocess.max_length == min(128, cfg["max_position_embeddings"]) and bb.preprocess.pooling == "mean"
    groups = _assert_groups_partition(bb)
    assert len(groups) == 4  # embeddings, layer 0, layer 1, pooler
    assert all(".embeddings." in n for n in groups[0])
    assert all(".encoder.layer.0." in n for n in groups[1])
    assert all(".encoder.layer.1." in n for n in groups[2])
    assert all(".pooler." in n for n in groups[3])


def test_hf_max_length_and_mean_pooling(tiny_bert_dir):
    bb = create_backbone(str(tiny_bert_dir), max_length=16).eval()
    assert bb.preprocess.max_length == 16
    long_text = " ".join(["word"] * 100)
    enc = bb.tokenize([long_text, "short"])
    assert enc["input_ids"].shape == (2, 16)
    assert enc["attention_mask"][1].sum() < 16  # padded
    with torch.no_grad():
        alone = bb(bb.tokenize(["short"]))
        batched = bb(enc)
    assert batched.shape == (2, 32)
    # mean pooling ignores padding: a text's features do not depend on the batch it is in
    torch.testing.assert_close(batched[1:], alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="max-length"):
        create_backbone(str(tiny_bert_dir), max_length=100_000)


def test_hf_folder_without_tokenizer_is_a_config_error(tmp_path):
    folder = tmp_path / "broken-hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(ConfigError, match="broken-hf"):
        create_backbone(str(folder))


# ------------------------------------------------------------------ registry and offline models
def test_list_backbones_offline_models():
    rows = {r["name"]: r for r in list_backbones()}
    for name, modality in (("efficientnet_lite0", "image"), ("minilm", "text")):
        assert rows[name]["offline"] is True and rows[name]["modality"] == modality
    assert rows["timm/<arch>"]["offline"] is False
    assert all(set(r) == {"name", "modality", "description", "offline", "licence"} for r in rows.values())
    assert transferkit.list_backbones() == list_backbones()


def test_efficientnet_lite0_preprocessing_from_timm(tk_cache):
    bb = create_backbone("efficientnet_lite0")
    pre = bb.preprocess
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)
    assert pre.crop_pct == 0.875 and pre.interpolation == "bicubic" and pre.input_size == 224
    assert pre.resize_size == 256
    assert bb.arch == "tf_efficientnet_lite0" and bb.num_features == 1280
    assert list((tk_cache / "weights").glob("efficientnet_lite0-*.safetensors")), "converted weights are cached"


def test_timm_folder_preprocessing_comes_from_its_config(weights, tmp_path):
    folder = tmp_path / "custom-norm"
    folder.mkdir()
    pre = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "crop_pct": 1.0, "interpolation": "bilinear"}
    (folder / "config.json").write_text(json.dumps({"architecture": "test_efficientnet", "pretrained_cfg": pre}))
    (folder / "model.safetensors").write_bytes(weights["test_efficientnet"].read_bytes())
    bb = create_backbone(str(folder))
    assert bb.preprocess.mean == (0.5, 0.5, 0.5) and bb.preprocess.std == (0.25, 0.25, 0.25)
    assert bb.preprocess.crop_pct == 1.0 and bb.preprocess.interpolation == "bilinear"
