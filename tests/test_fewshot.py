"""Few-shot prototypes and episodic evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.errors import ConfigError, DataError
from transferkit.fewshot import classify, evaluate_episodes, prototypes, transform


def _clusters(n_classes=8, per_class=20, dim=16, spread=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g) * 3
    labels = np.repeat(np.arange(n_classes), per_class)
    feats = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return feats, labels


def test_prototypes_and_transform_by_hand():
    f = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    p = prototypes(f, torch.tensor([0, 0, 1]), 2)
    torch.testing.assert_close(p, torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    t = transform(torch.tensor([[3.0, 4.0]]), torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(t, torch.tensor([[0.6, 0.8]]))
    with pytest.raises(DataError, match="class index 1"):
        prototypes(f, torch.tensor([0, 0, 0]), 2)


def test_nearest_prototype_classifies_by_hand():
    support = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[0.9, 0.2], [0.1, 2.0]])
    for metric in ("cosine", "euclidean"):
        assert classify(support, torch.tensor([0, 1]), query, 2, metric, centre=False).tolist() == [0, 1]


def test_episodes_separable_vs_random_and_ci():
    feats, labels = _clusters()
    good = evaluate_episodes(feats, labels, n_way=5, k_shot=1, n_query=5, episodes=200, seed=0)
    assert good.mean > 0.95
    noise = torch.randn(len(labels), 16, generator=torch.Generator().manual_seed(1))
    bad = evaluate_episodes(noise, labels, n_way=5, k_shot=1, n_query=5, episodes=400, seed=0)
    assert abs(bad.mean - 0.2) < 3 * bad.ci95 + 0.01  # chance, within the interval
    acc = bad.accuracies
    assert bad.ci95 == pytest.approx(1.96 * acc.std(ddof=1) / np.sqrt(len(acc)))
    again = evaluate_episodes(noise, labels, n_way=5, k_shot=1, n_query=5, episodes=400, seed=0)
    assert np.array_equal(again.accuracies, acc)  # fixed seed, same episodes
    more_shots = evaluate_episodes(feats, labels, n_way=5, k_shot=5, n_query=5, episodes=200, seed=0, metric="euclidean")
    assert more_shots.mean >= good.mean - 0.01


def test_queries_come_from_the_aligned_second_domain():
    feats, labels = _clusters()
    same = evaluate_episodes(feats, labels, episodes=100, n_query=5)
    aligned = evaluate_episodes(feats, labels, episodes=100, n_query=5, query_features=feats.clone())
    assert np.array_equal(same.accuracies, aligned.accuracies)  # same items, same episodes
    noise = torch.randn(feats.shape, generator=torch.Generator().manual_seed(2))
    other = evaluate_episodes(feats, labels, episodes=300, n_query=5, query_features=noise)
    assert other.mean < 0.35 < same.mean  # the queries were read from the second set
    with pytest.raises(DataError, match="same items"):
        evaluate_episodes(feats, labels, query_features=feats[:10])


def test_bad_episode_shapes():
    feats, labels = _clusters(n_classes=3, per_class=4)
    with pytest.raises(DataError, match="Only 3 classes"):
        evaluate_episodes(feats, labels, n_way=5, k_shot=1, n_query=2)
    with pytest.raises(DataError, match="at least 6 examples"):
        evaluate_episodes(feats, labels, n_way=2, k_shot=1, n_query=5)
    with pytest.raises(ConfigError):
        evaluate_episodes(feats, labels, n_way=1)


def test_cli_fewshot_eval_on_images(make_image_folder, tiny_timm_weights, tk_cache, capsys):
    import json

    from transferkit.cli import main

    folder = make_image_folder("fs", n=8)
    common = ["--backbone", "timm/test_efficientnet", "--backbone-weights", str(tiny_timm_weights), "--image-size", "32",
              "--device", "cpu", "--ways", "3", "--queries", "3", "--episodes", "50"]
    assert main(["fewshot-eval", str(folder), *common, "--shots", "1,3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["k_shot"] for r in rows] == [1, 3] and all(0 <= r["accuracy"] <= 1 and r["episodes"] == 50 for r in rows)
    assert main(["fewshot-eval", str(folder), *common, "--shots", "1,x"]) == 2
    assert "--shots" in capsys.readouterr().err
    assert main(["fewshot-eval", str(folder), *common[:-6], "--ways", "5"]) == 2
    assert "5-way episodes need 5" in capsys.readouterr().err


# ---------------------------------------------------------------- few-shot models, meta-training

def _tiny(tiny_timm_weights) -> dict:
    return {"backbone": "timm/test_efficientnet", "backbone_weights": str(tiny_timm_weights), "image_size": 32, "device": "cpu"}


def test_sampler_never_puts_a_query_in_the_support():
    from transferkit.fewshot import EpisodeSampler

    labels = np.repeat(np.arange(6), 7)
    sampler = EpisodeSampler(labels, n_way=4, k_shot=3, n_query=4, seed=3)
    for _ in range(200):
        s, q = sampler.sample()
        assert len(s) == 12 and len(q) == 16 and not set(s) & set(q)
        # indices are grouped by class in draw order, matching the episode labels
        assert (labels[s].reshape(4, 3) == labels[s][::3, None]).all()
        assert (labels[q].reshape(4, 4) == labels[s][::3, None]).all()
    with pytest.raises(DataError, match="at least 8 examples"):
        EpisodeSampler(labels, n_way=2, k_shot=5, n_query=3)  # K larger than available


def test_prototype_model_holds_the_class_means_and_grows(make_image_folder, tiny_timm_weights, tk_cache, tmp_path):
    from transferkit.data import load_data
    from transferkit.features import extract_features
    from transferkit.fewshot import prototype_model
    from transferkit.model import TransferModel

    support = make_image_folder("support", classes=("circle", "square"), n=4)
    model = prototype_model(support, **_tiny(tiny_timm_weights))
    d = load_data(support)
    feats = extract_features(model.backbone, d)
    z = transform(feats, feats.mean(0))
    expected = torch.stack([z[torch.as_tensor(d.targets) == c].mean(0) for c in range(2)])
    torch.testing.assert_close(model.head.prototypes, expected)
    assert model.label_names == ["circle", "square"]

    extra = make_image_folder("extra", classes=("triangle", "circle"), n=3, seed=5)
    model.add_support(extra, device="cpu")
    assert model.label_names == ["circle", "square", "triangle"] and model.head.counts.tolist() == [7, 4, 3]
    e = load_data(extra)
    ze = transform(extract_features(model.backbone, e), feats.mean(0))  # the centre stays the original support mean
    tri = ze[torch.as_tensor(e.targets) == e.label_names.index("triangle")].mean(0)
    torch.testing.assert_close(model.head.prototypes[2], tri)
    circle = torch.cat([z[torch.as_tensor(d.targets) == 0], ze[torch.as_tensor(e.targets) == e.label_names.index("circle")]]).mean(0)
    torch.testing.assert_close(model.head.prototypes[0], circle)

    queries = [str(p) for p in sorted((extra / "triangle").glob("*.png"))]
    before = model.predict(queries, device="cpu")
    model.save(tmp_path / "fs-model")
    loaded = TransferModel.load(tmp_path / "fs-model")
    after = loaded.predict(queries, device="cpu")
    assert loaded.label_names == model.label_names and loaded.strategy == "prototypes"
    assert [r["label"] for r in after] == [r["label"] for r in before]
    for a, b in zip(after, before):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)


def test_predict_with_support_works_out_of_the_box(make_image_folder, tiny_timm_weights, tk_cache):
    from transferkit.fewshot import predict, prototype_model

    support = make_image_folder("support", n=3)
    queries = make_image_folder("queries", n=2, seed=9)
    files = [str(p) for p in sorted(queries.rglob("*.png"))]
    res = predict(files, support, **_tiny(tiny_timm_weights))
    assert len(res) == len(files) and {r["label"] for r in res} <= {"circle", "square", "triangle"}
    for r in res:
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    # any model's predict(support=...) classifies into the support's classes with its backbone
    model = prototype_model(make_image_folder("two", classes=("circle", "square"), n=2), **_tiny(tiny_timm_weights))
    again = model.predict(files, support=support, device="cpu")
    assert [r["label"] for r in again] == [r["label"] for r in res]


def test_support_class_without_examples_is_an_error(make_image_folder, tiny_timm_weights, tk_cache, capsys):
    from transferkit.cli import main

    support = make_image_folder("support", classes=("circle", "square"), n=2)
    (support / "triangle").mkdir()
    query = next(support.rglob("*.png"))
    args = ["fewshot", str(query), "--support", str(support), "--backbone", "timm/test_efficientnet",
            "--backbone-weights", str(tiny_timm_weights), "--image-size", "32", "--device", "cpu"]
    assert main(args + ["--save", str(support.parent / "m")]) == 2
    assert "'triangle'" in capsys.readouterr().err and not (support.parent / "m").exists()
    (support / "triangle").rmdir()
    assert main(args + ["--json", "--save", str(support.parent / "m")]) == 0
    import json

    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["label"] in ("circle", "square") and (support.parent / "m" / "model.safetensors").is_file()


def test_meta_training_learns_and_keeps_frozen_groups(make_image_folder, tiny_timm_weights, tk_cache, tmp_path, one_thread):
    from transferkit.cli import main
    from transferkit.fewshot import meta_train, resolve_backbone

    base = make_image_folder("base", n=8)
    tiny = _tiny(tiny_timm_weights)
    before = {k: v.clone() for k, v in resolve_backbone(tiny["backbone"], image_size=32, weights=tiny["backbone_weights"]).state_dict().items()}
    model = meta_train(base, ways=3, shots=2, queries=3, episodes=100, lr=3e-3, train_last=1, **tiny)
    hist = model.info["meta_training"]["history"]
    assert len(hist) == 2 and hist[-1]["loss"] < hist[0]["loss"]  # the episodic loss went down
    groups = model.backbone.layer_groups()
    after = model.backbone.state_dict()
    frozen = {n for g in groups[:-1] for n in g}
    changed = {n for n in frozen if not torch.equal(after[n], before[n])}
    assert not changed  # everything but the last group is bit-for-bit the pretrained weights
    assert any(not torch.equal(after[n], before[n]) for n in groups[-1])
    assert model.label_names == ["circle", "square", "triangle"] and model.strategy == "meta-prototypes"
    # the CLI saves it; 'fewshot --model' reuses its backbone for new support sets
    assert main(["meta-train", str(base), "--save", str(tmp_path / "meta"), "--ways", "3", "--shots", "1", "--queries", "2",
                 "--episodes", "3", "--backbone", "timm/test_efficientnet", "--backbone-weights", str(tiny_timm_weights),
                 "--image-size", "32", "--device", "cpu", "--no-progress"]) == 0
    support = make_image_folder("s2", classes=("circle", "triangle"), n=2, seed=4)
    assert main(["fewshot", str(next(base.rglob("*.png"))), "--support", str(support), "--model", str(tmp_path / "meta"),
                 "--device", "cpu", "--json"]) == 0
