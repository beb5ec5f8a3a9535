"""The ``lora`` strategy: peft LoRA adapters on a frozen pretrained backbone, plus a new head.

Tiny offline models only: timm's ``test_efficientnet`` with local "pretrained" safetensors weights
and a 2-layer random BERT folder. Each model is trained once per module and shared by the tests.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("timm")

import transferkit  # noqa: E402
import transferkit.strategies.lora as lora  # noqa: E402  (registers the strategy)
from transferkit import FitConfig, TaskData  # noqa: E402
from transferkit.backbones.lora import LoraBackbone  # noqa: E402
from transferkit.errors import ConfigError, ModelLoadError, TransferkitError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
TEXTS = {
    "pos": ["good great film", "wonderful happy story", "great fun and good", "lovely good acting", "happy great ending", "good wonderful cast"],
    "neg": ["bad awful film", "terrible sad story", "awful boring and bad", "poor bad acting", "sad terrible ending", "bad awful cast"],
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Module-wide: an isolated cache and no hub access (as the ``tk_cache`` fixture, per module)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFERKIT_CACHE", str(tmp_path_factory.mktemp("tk-cache")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        import huggingface_hub.constants

        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> TaskData:
    from PIL import Image

    root = tmp_path_factory.mktemp("lora-images")
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir()
        for i in range(8):
            arr = np.clip(np.array(colour) + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr, "RGB").save(root / name / f"{i:02d}.png")
    return transferkit.load_data(root)


@pytest.fixture(scope="module")
def texts() -> TaskData:
    names = sorted(TEXTS)
    inputs = [t for n in names for t in TEXTS[n]]
    targets = np.array([i for i, n in enumerate(names) for _ in TEXTS[n]], dtype=np.int64)
    return TaskData(inputs, targets, names, "text", "classification", "memory")


@pytest.fixture(scope="module")
def image_cfg(tiny_timm_weights) -> FitConfig:
    return FitConfig(backbone="timm/test_efficientnet", backbone_weights=str(tiny_timm_weights), strategy="lora", image_size=32,
                     epochs=2, batch_size=8, lr=3e-2, device="cpu", val_fraction=0.0, test_fraction=0.0)


@pytest.fixture(scope="module")
def text_cfg(tiny_bert_dir) -> FitConfig:
    return FitConfig(backbone=str(tiny_bert_dir), strategy="lora", epochs=2, batch_size=4, max_length=16, lr=3e-2, device="cpu",
                     val_fraction=0.0, test_fraction=0.0)


def _fit(data: TaskData, cfg: FitConfig):
    return transferkit.fit(data, config=cfg, progress=False).model


@pytest.fixture(scope="module")
def image_model(env, images, image_cfg):
    return _fit(images, image_cfg)


@pytest.fixture(scope="module")
def text_model(env, texts, text_cfg):
    return _fit(texts, text_cfg)


@pytest.fixture(scope="module")
def saved_image_model(image_model, tmp_path_factory) -> Path:
    return image_model.save(tmp_path_factory.mktemp("lora-saved") / "model")


def _base_key(key: str) -> str:
    """``base.model.blocks.1.0.conv_pwl.base_layer.weight`` -> ``blocks.1.0.conv_pwl.weight`` (the pretrained name)."""
    assert key.startswith("base.model."), key
    return key[len("base.model."):].replace(".base_layer.", ".")


def _assert_base_unchanged(backbone: LoraBackbone, pretrained: dict[str, torch.Tensor]) -> None:
    state = backbone.state_dict()
    base_keys = backbone.recipe_state_keys()
    assert base_keys and not any("lora_" in k for k in base_keys)
    for k in base_keys:
        assert torch.equal(state[k], pretrained[_base_key(k)]), f"pretrained weight {k} changed in training"
    # and the adapters did train: LoRA's B starts at zero
    assert any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k)


def _assert_only_adapters_and_head_train(model) -> None:
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("head.") or ".lora_" in n for n in trainable), trainable
    assert any(n.startswith("head.") for n in trainable)
    adapter_count = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone."))
    peft_trainable, peft_total = model.backbone.peft_model.get_nb_trainable_parameters()
    assert adapter_count == peft_trainable > 0
    head = sum(p.numel() for p in model.head.parameters())
    assert model.info["trainable_parameters"] == adapter_count + head
    assert model.info["total_parameters"] == peft_total + head == sum(p.numel() for p in model.parameters())
    assert model.info["trainable_parameters"] < model.info["total_parameters"] / 2


# ------------------------------------------------------------------ training
def test_timm_base_weights_unchanged_and_only_adapters_and_head_train(image_model, tiny_timm_weights):
    from safetensors.torch import load_file

    assert image_model.strategy == "lora" and isinstance(image_model.backbone, LoraBackbone)
    _assert_base_unchanged(image_model.backbone, load_file(str(tiny_timm_weights)))
    _assert_only_adapters_and_head_train(image_model)
    targets = image_model.backbone.target_modules  # default: the pointwise 1x1 convolutions
    convs = dict(image_model.backbone.base.model.named_modules())
    assert targets and all(tuple(convs[f"{t}"].base_layer.kernel_size) == (1, 1) for t in targets)
    assert not any("conv_dw" in t or "conv_stem" in t for t in targets)


def test_text_base_weights_unchanged_and_only_adapters_and_head_train(text_model, tiny_bert_dir):
    from transformers import AutoModel

    assert text_model.backbone.modality == "text"
    _assert_base_unchanged(text_model.backbone, AutoModel.from_pretrained(tiny_bert_dir).state_dict())
    _assert_only_adapters_and_head_train(text_model)
    assert {t.rsplit(".", 1)[-1] for t in text_model.backbone.target_modules} == {"query", "value"}


def test_batchnorm_statistics_stay_pretrained_in_train_mode(image_model):
    image_model.train()
    try:
        norms = [m for m in image_model.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert norms and not any(m.training for m in norms)
    finally:
        image_model.eval()


# ------------------------------------------------------------------ saving and loading
def test_save_holds_only_adapter_and_head_and_reload_is_exact(image_model, saved_image_model, images):
    from safetensors import safe_open

    with safe_open(str(saved_image_model / "model.safetensors"), "pt") as fh:
        keys = set(fh.keys())
    expected = {f"backbone.{n}" for n, _ in image_model.backbone.named_parameters()} | {f"head.{k}" for k in image_model.head.state_dict()}
    assert keys == expected
    assert not [k for k in keys if k.startswith("backbone.") and ".lora_" not in k]
    recipe = json.loads((saved_image_model / "config.json").read_text())["backbone"]
    assert recipe["type"] == "lora" and recipe["base"]["type"] == "timm"
    assert recipe["base_id"]["backbone"] == "timm/test_efficientnet" and Path(recipe["base_id"]["backbone_weights"]).is_file()

    loaded = transferkit.load(saved_image_model)
    assert isinstance(loaded.backbone, LoraBackbone)
    np.testing.assert_array_equal(loaded.predict_outputs(images.inputs, device="cpu"), image_model.predict_outputs(images.inputs, device="cpu"))
    ref = image_model.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k]), k
    _assert_only_adapters_and_head_train(loaded)


def test_reloaded_head_is_the_trained_one(image_model, saved_image_model):
    from transferkit.heads import make_head

    loaded = transferkit.load(saved_image_model)
    trained = image_model.head.state_dict()
    assert trained.keys() == loaded.head.state_dict().keys()
    for k, v in loaded.head.state_dict().items():
        assert torch.equal(v, trained[k]), k
    for seed in (0, 1):  # a re-initialised head (the PEFT pitfall of an unsaved head) would differ
        torch.manual_seed(seed)
        fresh = make_head(loaded.head_spec).state_dict()
        assert not all(torch.equal(fresh[k], trained[k]) for k in trained)


def test_text_model_saves_and_reloads(text_model, texts, tmp_path, env):
    folder = text_model.save(tmp_path / "text")
    assert (folder / "backbone" / "config.json").is_file()
    loaded = transferkit.load(folder)
    np.testing.assert_array_equal(loaded.predict_outputs(texts.inputs, device="cpu"), text_model.predict_outputs(texts.inputs, device="cpu"))


def test_changed_base_weights_are_refused_at_load(env, images, image_cfg, tiny_timm_weights, tmp_path):
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "base.safetensors"
    shutil.copy(tiny_timm_weights, weights)
    model = _fit(images, image_cfg.replace(backbone_weights=str(weights), epochs=1))
    folder = model.save(tmp_path / "model")
    state = load_file(str(weights))
    state["conv_stem.weight"] = state["conv_stem.weight"] + 1
    save_file(state, str(weights))
    with pytest.raises(ModelLoadError, match="pretrained weights of timm/test_efficientnet differ"):
        transferkit.load(folder)


# ------------------------------------------------------------------ merging for export
@pytest.mark.parametrize("which", ["image", "text"])
def test_merged_model_matches_and_is_a_plain_model(which, request, images, texts, tmp_path, env):
    import copy

    inputs = (images if which == "image" else texts).inputs
    model = copy.deepcopy(request.getfixturevalue(f"{which}_model"))
    with torch.no_grad():  # a large adapter update, so that merging changes the weights for real
        gen = torch.Generator().manual_seed(0)
        for n, p in model.backbone.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    before = model.predict_outputs(inputs, device="cpu")
    merged = lora.merge(model)
    assert not isinstance(merged.backbone, LoraBackbone) and merged.backbone.recipe()["type"] == ("timm" if which == "image" else "hf")
    assert not any("lora_" in k or "base_layer" in k for k in merged.state_dict())
    assert all(p.requires_grad for p in merged.parameters())
    n = sum(p.numel() for p in merged.parameters())
    assert merged.info["trainable_parameters"] == merged.info["total_parameters"] == n and merged.info["lora"]["merged"]
    after = merged.predict_outputs(inputs, device="cpu")
    pretrained, merged_state = model.backbone.state_dict(), merged.backbone.state_dict()
    for t in model.backbone.target_modules:  # every adapted layer's weight moved by its adapter
        assert not torch.equal(merged_state[f"model.{t}.weight"], pretrained[f"base.model.{t}.base_layer.weight"]), t
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(model.predict_outputs(inputs, device="cpu"), before)  # the LoRA model is untouched
    folder = merged.save(tmp_path / "merged")
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        assert set(fh.keys()) == set(merged.state_dict())  # a plain model: all weights stored
    np.testing.assert_array_equal(transferkit.load(folder).predict_outputs(inputs, device="cpu"), after)


# ------------------------------------------------------------------ options
def test_target_pattern_and_rank(env, texts, text_cfg):
    model = _fit(texts, text_cfg.replace(lora_r=2, lora_alpha=4.0, lora_targets=r"attention\.output\.dense$", epochs=1))
    targets = model.backbone.target_modules
    assert len(targets) == 2 and all(t.endswith("attention.output.dense") for t in targets)
    a = [p for n, p in model.backbone.named_parameters() if "lora_A" in n]
    assert a and all(p.shape[0] == 2 for p in a)


@pytest.mark.parametrize("field, value, option", [
    ("lora_r", 0, "--lora-r"), ("lora_r", -2, "--lora-r"), ("lora_alpha", 0.0, "--lora-alpha"),
    ("lora_dropout", 1.0, "--lora-dropout"), ("lora_targets", "conv_(pw", "--lora-targets"),
])
def test_bad_option_values_are_one_line_config_errors(field, value, option):
    with pytest.raises(ConfigError) as e:
        FitConfig(**{field: value})
    assert option in str(e.value) and "\n" not in str(e.value)


def test_target_pattern_matching_nothing_is_refused(env, images, image_cfg, monkeypatch):
    import transferkit.inputs as inputs

    monkeypatch.setattr(inputs, "make_batch", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ConfigError) as e:
        _fit(images, image_cfg.replace(lora_targets="no_such_layer"))
    msg = str(e.value)
    assert "--lora-targets 'no_such_layer'" in msg and "\n" not in msg and re.search(r"blocks\.\d", msg)
    with pytest.raises(ConfigError, match="--lora-targets 'conv_dw'"):  # depthwise convolutions are not adaptable
        _fit(images, image_cfg.replace(lora_targets="conv_dw"))


def test_cli_bad_rank_is_one_line_exit_2(tmp_path, capsys):
    from transferkit.cli import main

    rc = main(["fit", str(tmp_path), "--strategy", "lora", "--lora-r", "0", "--no-progress"])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "--lora-r" in lines[0], lines


def test_resume_with_other_lora_options_is_refused(env, images, image_cfg, tmp_path):
    run = tmp_path / "run"
    transferkit.fit(images, config=image_cfg.replace(epochs=2, checkpoint_every="1"), out=run, progress=False)
    with pytest.raises(TransferkitError, match="lora_r: 8 -> 4"):
        transferkit.fit(images, config=image_cfg.replace(epochs=2, checkpoint_every="1", lora_r=4), resume=run, progress=False)
