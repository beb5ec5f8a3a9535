"""Few-shot text classification with a label prior (transferkit.fewshot.text_head)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.backbones import create_backbone
from transferkit.data import TaskData
from transferkit.errors import ConfigError, DataError
from transferkit.features import compute_features
from transferkit.fewshot.text_head import finetune_encoder, prior_class_vectors, text_fewshot_model
from transferkit.model import TransferModel
from transferkit.zeroshot import label_vectors

FRUIT = ["apple banana cherry", "ripe pear and plum", "sweet mango juice", "a bowl of grapes"]
CARS = ["a fast red car", "the truck drove off", "bus and train ticket", "a bicycle on the road"]


def _support() -> TaskData:
    return TaskData(FRUIT + CARS, np.array([0] * 4 + [1] * 4), ["fruit", "vehicles"], "text", source="toy")


def test_prior_class_vectors_by_hand():
    feats = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    vecs = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    sums, counts = prior_class_vectors(feats, torch.tensor([0, 1]), vecs, prior_weight=2.0)
    r = 2 ** -0.5
    torch.testing.assert_close(sums, torch.tensor([[2.6, 0.8], [0.0, 3.0], [2 * r, 2 * r]]))
    torch.testing.assert_close(counts, torch.tensor([3.0, 3.0, 2.0]))
    plain, n = prior_class_vectors(feats, torch.tensor([0, 1]), vecs[:2], prior_weight=0.0)  # = sums of normalised examples
    torch.testing.assert_close(plain, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    torch.testing.assert_close(n, torch.tensor([1.0, 1.0]))
    with pytest.raises(DataError, match="class index 2"):
        prior_class_vectors(feats, torch.tensor([0, 1]), vecs, prior_weight=0.0)
    with pytest.raises(ConfigError, match="prior_weight"):
        prior_class_vectors(feats, torch.tensor([0, 1]), vecs, prior_weight=-1.0)


def test_length_batched_text_features_keep_order_and_values(tiny_bert_dir, one_thread):
    bb = create_backbone(str(tiny_bert_dir))
    texts = ["a much longer text with many more words in it than the others", "short", "a medium text here", "x"]
    alone = torch.cat([compute_features(bb, [t], device="cpu") for t in texts])  # no padding at all
    torch.testing.assert_close(compute_features(bb, texts, batch_size=2, device="cpu"), alone, atol=1e-5, rtol=1e-4)
    assert compute_features(bb, [], device="cpu").shape == (0, bb.num_features)


def test_prior_model_without_training(tiny_bert_dir, tk_cache, one_thread, tmp_path):
    bb = create_backbone(str(tiny_bert_dir))
    desc = {"fruit": "fruit such as apples and pears"}
    model = text_fewshot_model(_support(), descriptions=desc, backbone=bb, epochs=0, prior_weight=3.0, scale=10.0, device="cpu")
    assert isinstance(model, TransferModel) and model.strategy == "fewshot-text-prior"
    assert model.backbone is bb  # frozen encoder reused, not copied
    feats = compute_features(bb, _support().inputs, device="cpu")
    sums, counts = prior_class_vectors(feats, torch.tensor(_support().targets), label_vectors(bb, ["fruit", "vehicles"], desc, device="cpu"), 3.0)
    torch.testing.assert_close(model.head.sums, sums)
    torch.testing.assert_close(model.head.counts, torch.tensor([7.0, 7.0]))
    assert float(model.head.scale) == 10.0
    q = ["apple and cherry", "a red truck"]
    out = model.predict_outputs(q, device="cpu")
    expected = 10.0 * torch.nn.functional.normalize(compute_features(bb, q, device="cpu"), dim=-1) @ torch.nn.functional.normalize(sums, dim=-1).T
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-4)
    model.save(tmp_path / "m")
    again = TransferModel.load(tmp_path / "m")
    np.testing.assert_allclose(again.predict_outputs(q, device="cpu"), out, atol=1e-5)
    assert again.info["descriptions"] == desc
    model.add_support(TaskData(["plum"], np.array([0]), ["fruit"], "text"), device="cpu")
    assert model.head.counts.tolist() == [8.0, 7.0]  # the prior stays, the new example adds to it


def test_finetune_fits_the_support_and_keeps_the_prior_head(tiny_bert_dir, tk_cache, one_thread):
    bb = create_backbone(str(tiny_bert_dir))
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    model = text_fewshot_model(_support(), descriptions={"vehicles": "cars, trucks and trains"}, backbone=bb, epochs=8, lr=1e-3,
                               head_lr=1e-2, batch_size=4, prior_weight=1.0, seed=0, device="cpu")
    assert model.strategy == "fewshot-text-finetune"
    hist = model.info["history"]
    assert len(hist) == 8 and all(np.isfinite(h["loss"]) for h in hist)
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    assert any(not torch.equal(before[k], v) for k, v in bb.state_dict().items())  # fine-tuned in place
    pred = [p["label"] for p in model.predict(FRUIT + CARS, device="cpu")]
    assert pred == ["fruit"] * 4 + ["vehicles"] * 4
    # the class vectors are recomputed from the fine-tuned encoder (examples + prior), not the training head
    feats = compute_features(model.backbone, _support().inputs, device="cpu")
    vecs = label_vectors(model.backbone, ["fruit", "vehicles"], {"vehicles": "cars, trucks and trains"}, device="cpu")
    sums, _ = prior_class_vectors(feats, torch.tensor(_support().targets), vecs, 1.0)
    torch.testing.assert_close(model.head.sums, sums, atol=1e-5, rtol=1e-4)


def test_finetune_encoder_is_seeded(tiny_bert_dir, one_thread):
    runs = []
    for _ in range(2):
        bb = create_backbone(str(tiny_bert_dir))
        runs.append(finetune_encoder(bb, FRUIT + CARS, [0] * 4 + [1] * 4, torch.eye(2, bb.num_features), epochs=2, batch_size=4,
                                     lr=1e-3, seed=3, device="cpu"))
    assert [h["loss"] for h in runs[0]] == [h["loss"] for h in runs[1]]
    with pytest.raises(ConfigError, match="positive"):
        finetune_encoder(bb, FRUIT, [0] * 4, torch.eye(1, bb.num_features), epochs=0)


def test_bad_inputs_are_refused(tiny_bert_dir, tk_cache, tmp_path):
    bb = create_backbone(str(tiny_bert_dir))
    labels = tmp_path / "labels.txt"
    labels.write_text("fruit: apples\nanimals: cats and dogs\n")
    with pytest.raises(DataError, match="animals"):
        text_fewshot_model(_support(), labels_file=labels, backbone=bb, epochs=0, device="cpu")
    with pytest.raises(ConfigError, match="epochs"):
        text_fewshot_model(_support(), backbone=bb, epochs=-1, device="cpu")
    with pytest.raises(DataError, match="text"):
        text_fewshot_model(TaskData(["a.png", "b.png"], np.array([0, 1]), ["a", "b"], "image"), backbone=bb, device="cpu")
