"""Zero-shot: label embeddings, semantic mapping to unseen classes, generalised calibration, CLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from transferkit.errors import ConfigError, DataError
from transferkit.zeroshot import (choose_gamma, fit_mapping, gzsl_accuracies, harmonic_mean, label_vectors, mapped_scores,
                                  read_attributes, read_labels, zeroshot_model)

pytestmark = pytest.mark.usefixtures("one_thread", "tk_cache")


def test_read_labels_forms_and_errors(tmp_path):
    assert read_labels("cat, dog ,bird") == (["cat", "dog", "bird"], {})
    f = tmp_path / "labels.txt"
    f.write_text("# topics\ncat: a small furry pet\n\ndog\n")
    assert read_labels(labels_file=f) == (["cat", "dog"], {"cat": "a small furry pet"})
    c = tmp_path / "labels.csv"
    c.write_text("label,description\ncat,meows\ndog,\n")
    assert read_labels(labels_file=c) == (["cat", "dog"], {"cat": "meows"})
    with pytest.raises(ConfigError, match="no labels"):
        read_labels(" , ")
    with pytest.raises(ConfigError, match="exactly one"):
        read_labels()
    with pytest.raises(ConfigError, match="'cat' more than once"):
        read_labels("cat,dog,cat")


def test_attribute_csv_missing_class_is_named(tmp_path):
    f = tmp_path / "attrs.csv"
    f.write_text("class,striped,legs\nzebra,1,4\nbird,0,2\n")
    torch.testing.assert_close(read_attributes(f, ["bird", "zebra"]), torch.tensor([[0.0, 2.0], [1.0, 4.0]]))
    with pytest.raises(DataError, match=r"attrs.csv has no attribute row for class 'snake'"):
        read_attributes(f, ["zebra", "snake"])
    f.write_text("class,striped\nzebra,yes\n")
    with pytest.raises(DataError, match="line 2"):
        read_attributes(f, ["zebra"])


def _semantic_task(n_seen=12, n_unseen=6, per_class=30, dim_s=8, dim_x=32, seed=0):
    """Features are a fixed linear image of the class vector plus noise: the mapping is known."""
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(n_seen + n_unseen, dim_s, generator=g)
    a = torch.randn(dim_x, dim_s, generator=g)
    y = torch.arange(n_seen + n_unseen).repeat_interleave(per_class)
    x = vectors[y] @ a.T + 0.3 * torch.randn(len(y), dim_x, generator=g) + 5.0
    return x, y, vectors, n_seen


def test_learned_mapping_recovers_unseen_classes():
    x, y, vectors, n_seen = _semantic_task()
    seen = y < n_seen
    w, mean = fit_mapping(x[seen], y[seen], vectors[:n_seen])
    unseen_scores = mapped_scores(x[~seen], w, mean, vectors[n_seen:])
    acc = float((unseen_scores.argmax(1) == y[~seen] - n_seen).float().mean())
    assert acc > 0.9  # chance is 1/6
    shuffled = vectors[torch.randperm(len(vectors), generator=torch.Generator().manual_seed(1))]
    w2, mean2 = fit_mapping(x[seen], y[seen], shuffled[:n_seen])  # wrong side information: no transfer
    bad = float((mapped_scores(x[~seen], w2, mean2, shuffled[n_seen:]).argmax(1) == y[~seen] - n_seen).float().mean())
    assert bad < acc - 0.3


def test_generalised_calibration_by_hand_and_auto():
    scores = torch.tensor([[0.9, 0.8], [0.7, 0.6], [0.2, 0.9]])  # classes: 0 seen, 1 unseen
    y = torch.tensor([0, 1, 1])
    seen_mask = torch.tensor([True, False])
    r = gzsl_accuracies(scores, y, seen_mask, 0.0)
    assert (r["seen"], r["unseen"]) == (1.0, 0.5)
    r = gzsl_accuracies(scores, y, seen_mask, 0.15)  # item 1 flips to unseen, item 0 too
    assert (r["seen"], r["unseen"]) == (0.0, 1.0) and r["harmonic"] == 0.0
    assert harmonic_mean(0.5, 1.0) == pytest.approx(2 / 3)
    x, y, vectors, n_seen = _semantic_task(seed=3)
    seen = y < n_seen
    gamma = choose_gamma(x[seen], y[seen], vectors)
    assert 0.0 <= gamma <= 0.5


def test_text_zeroshot_model_uses_label_prompts_and_reloads(tiny_bert_dir, tmp_path):
    from transferkit.backbones import create_backbone
    from transferkit.features import compute_features
    from transferkit.model import TransferModel

    enc = create_backbone(str(tiny_bert_dir))
    vec = label_vectors(enc, ["sport", "food"], {"food": "things to eat"}, templates=["{}", "about {}"], device="cpu")
    z = torch.nn.functional.normalize(compute_features(enc, ["sport", "about sport", "food", "about food", "things to eat"], device="cpu"), dim=-1)
    expected = torch.nn.functional.normalize(torch.stack([z[:2].sum(0), z[2:].sum(0)]), dim=-1)
    torch.testing.assert_close(vec, expected)

    model = zeroshot_model(["sport", "food"], backbone=str(tiny_bert_dir), device="cpu")
    texts = ["sport", "food", "a football match"]
    res = model.predict(texts, device="cpu")
    assert [r["label"] for r in res[:2]] == ["sport", "food"]  # a label's own name is its nearest vector
    model.save(tmp_path / "zs")
    again = TransferModel.load(tmp_path / "zs").predict(texts, device="cpu")
    for a, b in zip(again, res):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)
    # few-shot on top of zero-shot: examples join the label vectors, new names add classes
    from transferkit.data import TaskData

    model.add_support(TaskData(["pasta night", "tennis final"], np.array([0, 1]), ["music", "sport"], "text"), device="cpu")
    assert model.label_names == ["sport", "food", "music"] and model.head.counts.tolist() == [2, 1, 1]


def test_image_semantic_mapping_end_to_end(make_image_folder, tiny_timm_weights, tmp_path, capsys):
    from transferkit.cli import main

    seen = make_image_folder("seen", classes=("circle", "square"), n=6)
    unseen = make_image_folder("unseen", classes=("triangle",), n=3, seed=7)
    attrs = tmp_path / "attrs.csv"
    attrs.write_text("class,red,green,blue,round,corners\ncircle,1,0,0,1,0\nsquare,0,1,0,0,4\ntriangle,0,0,1,0,3\n")
    tiny = ["--backbone", "timm/test_efficientnet", "--backbone-weights", str(tiny_timm_weights), "--image-size", "32", "--device", "cpu"]
    args = ["zeroshot", str(unseen), "--seen", str(seen), "--attributes", str(attrs), *tiny, "--json"]
    assert main([*args, "--labels", "circle,square,triangle", "--save", str(tmp_path / "gzsl")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all(set(r["probabilities"]) == {"circle", "square", "triangle"} for r in rows)
    cfg = json.loads((tmp_path / "gzsl" / "config.json").read_text())
    zs = cfg["info"]["zero_shot"]
    assert zs["kind"] == "semantic-mapping" and zs["seen_classes"] == ["circle", "square"] and 0 <= zs["gamma"] <= 0.5
    # bad input: one line, exit 2, nothing written
    attrs.write_text("class,red\ncircle,1\nsquare,0\n")
    assert main([*args, "--labels", "triangle", "--save", str(tmp_path / "bad")]) == 2
    assert "no attribute row for class 'triangle'" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*args, "--labels", ""]) == 2
    assert "no labels" in capsys.readouterr().err
    assert main(["zeroshot", str(unseen), "--labels", "triangle", *tiny]) == 2  # an image backbone has no text tower
    assert "--seen" in capsys.readouterr().err


def test_clip_zeroshot_with_prompt_ensembling(tiny_clip_dir, make_image_folder, tmp_path):
    from transferkit.backbones import create_backbone
    from transferkit.model import TransferModel

    bb = create_backbone(str(tiny_clip_dir))
    model = zeroshot_model(["cat", "dog"], backbone=bb, device="cpu")
    t = torch.nn.functional.normalize(bb.encode_texts(["a photo of a cat.", "a drawing of a cat.", "an icon of a cat.", "a cat."]), dim=-1)
    torch.testing.assert_close(model.head.prototypes[0], torch.nn.functional.normalize(t.sum(0), dim=0))
    assert float(model.head.scale) == pytest.approx(bb.logit_scale, rel=1e-5)
    files = [str(p) for p in sorted(make_image_folder("imgs", n=1).rglob("*.png"))]
    res = model.predict(files, device="cpu")
    assert len(res) == 3 and all(r["label"] in ("cat", "dog") for r in res)
    model.save(tmp_path / "clip-zs")
    again = TransferModel.load(tmp_path / "clip-zs").predict(files, device="cpu")
    for a, b in zip(again, res):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
