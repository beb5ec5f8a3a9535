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
