"""Feature points inside a backbone, the cut backbone, and the kept source classifier."""

from __future__ import annotations

import torch

from transferkit.backbones import create_backbone
from transferkit.backbones.layers import OUTPUT, CutBackbone, point_names, pooled_layers


def _tiny_timm(weights):
    return create_backbone("timm/test_efficientnet", weights=weights).eval()


def test_points_follow_layer_groups_and_stop_early(tk_cache, tiny_timm_weights):
    bb = _tiny_timm(tiny_timm_weights)
    names = point_names(bb)
    assert names[-1] == OUTPUT and len(names) == len(bb.layer_groups())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = pooled_layers(bb, x, names)
        assert torch.equal(feats[OUTPUT], bb(x))
        # a point's features are the spatial mean of that module's output
        mod = dict(bb.feature_points())[names[1]]
        seen = {}
        handle = mod.register_forward_hook(lambda m, a, o: seen.setdefault("out", o))
        bb(x)
        handle.remove()
        torch.testing.assert_close(feats[names[1]], seen["out"].mean(dim=(2, 3)))
        # asking for an early point only does not run the modules after it
        later = dict(bb.feature_points())[names[-2]]
        calls = []
        handle = later.register_forward_hook(lambda *a: calls.append(1))
        pooled_layers(bb, x, [names[1]])
        handle.remove()
    assert calls == []


def test_text_points_and_cut_match_hidden_states(tk_cache, tiny_bert_dir):
    bb = create_backbone(str(tiny_bert_dir)).eval()
    names = point_names(bb)
    assert names[0] == "embeddings" and names[-1] == OUTPUT
    batch = bb.tokenize(["a short one", "a somewhat longer text with more tokens"])
    with torch.no_grad():
        hidden = bb.model(**batch, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"].unsqueeze(-1).float()
        cut = CutBackbone(bb, names[1]).eval()
        expected = (hidden[1] * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(cut(batch), expected)
        torch.testing.assert_close(pooled_layers(bb, batch, [OUTPUT])[OUTPUT], (hidden[-1] * mask).sum(1) / mask.sum(1))


def test_fit_on_a_cut_layer_saves_and_reloads(tk_cache, tiny_timm_weights, make_image_folder, tmp_path):
    from transferkit import FitConfig, fit
    from transferkit.data import load_data
    from transferkit.model import TransferModel

    data = make_image_folder(n=6)
    bb = _tiny_timm(tiny_timm_weights)
    layer = point_names(bb)[-2]
    cfg = FitConfig(backbone="timm/test_efficientnet", backbone_weights=str(tiny_timm_weights), layer=layer,
                    strategy="finetune", epochs=1, batch_size=8, image_size=32, device="cpu")
    model = fit(str(data), config=cfg, progress=False).model
    assert model.backbone.name.endswith(f"@{layer}") and model.backbone.num_features == CutBackbone(bb, layer).num_features
    # weights above the cut take no part in the forward pass, so training leaves them as they were
    trained = model.backbone.inner.state_dict()
    last = [n[len("model."):] for n in bb.layer_groups()[-1]]
    assert last and all(torch.equal(trained[f"model.{n}"], bb.model.state_dict()[n]) for n in last)
    first = bb.layer_groups()[-2][0]
    assert not torch.equal(trained[first], bb.state_dict()[first])  # below the cut it did train
    model.save(tmp_path / "m")
    back = TransferModel.load(tmp_path / "m")
    assert back.backbone.recipe()["type"] == "cut"
    inputs = load_data(str(data)).inputs[:4]
    assert torch.equal(torch.as_tensor(model.predict_outputs(inputs)), torch.as_tensor(back.predict_outputs(inputs)))


def test_unknown_layer_is_one_clear_error(tk_cache, tiny_timm_weights):
    import pytest

    from transferkit.errors import ConfigError

    with pytest.raises(ConfigError, match="Unknown layer 'nope'.*use one of"):
        create_backbone("timm/test_efficientnet", weights=tiny_timm_weights, layer="nope")


def test_source_head_kept_from_weights_file(tk_cache, tiny_timm_weights):
    from safetensors.torch import load_file

    state = load_file(str(tiny_timm_weights))
    bb = _tiny_timm(tiny_timm_weights)
    w, b = bb.source_head
    assert torch.equal(w, state["classifier.weight"]) and torch.equal(b, state["classifier.bias"])
    assert create_backbone("timm/test_efficientnet", pretrained=False).source_head is None
    # the kept head on the backbone's features gives the full timm model's logits
    import timm

    full = timm.create_model("test_efficientnet", pretrained=False)
    full.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bb(x) @ w.T + b, full.eval()(x), rtol=1e-4, atol=1e-5)
