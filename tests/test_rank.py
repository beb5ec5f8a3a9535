"""`transferkit rank`: candidates ordered by transferability, negative-transfer warnings, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from transferkit.cli import main
from transferkit.data import load_data
from transferkit.transferability import RankRow, rank
from transferkit.transferability.rank import aggregate, negative_transfer_warnings, recommend, stratified_subset

pytestmark = pytest.mark.usefixtures("tk_cache")


def _timm_folder(root: Path, weights: Path, scale: float = 1.0) -> Path:
    """A timm hub-style folder (config.json + model.safetensors); ``scale=0`` zeroes every weight."""
    from safetensors.torch import load_file, save_file

    root.mkdir(parents=True, exist_ok=True)
    state = {k: (v * scale if v.is_floating_point() else v).contiguous() for k, v in load_file(str(weights)).items()}
    save_file(state, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({"architecture": "test_efficientnet"}))
    return root


def _row(name, scores, pretrained=True, layer="output"):
    return RankRow(name, layer, pretrained, 8, scores, 0.1)


def test_aggregate_is_the_mean_rank_over_common_scores():
    rows = [_row("a", {"logme": 1.0, "knn": 0.5, "leep": -1.0}), _row("b", {"logme": 2.0, "knn": 0.4}),
            _row("c", {"logme": 0.0, "knn": 0.9})]
    assert aggregate(rows) == ["knn", "logme"]  # leep is missing for b and c: not averaged
    assert [r.mean_rank for r in rows] == [2.0, 2.0, 2.0]
    rows[2].scores["logme"] = 3.0
    aggregate(rows)
    assert [r.mean_rank for r in rows] == [2.5, 2.5, 1.0]


def test_negative_transfer_warning_needs_a_majority_of_wins():
    good = [_row("m", {"logme": 1.0, "knn": 0.9, "hscore": 2.0}), _row("m", {"logme": 0.5, "knn": 0.95, "hscore": 1.0}, False)]
    assert negative_transfer_warnings(good, ["logme", "knn", "hscore"]) == []
    bad = [_row("m", {"logme": 1.0, "knn": 0.5, "hscore": 0.5}), _row("m", {"logme": 0.5, "knn": 0.9, "hscore": 1.0}, False)]
    (warning,) = negative_transfer_warnings(bad, ["logme", "knn", "hscore"])
    assert "m beats its random initialisation on 1 of 3 scores (logme)" in warning


def test_recommendation_follows_layer_and_data_size():
    inner = [_row("m", {"knn": 1.0}, layer="blocks.2"), _row("m", {"knn": 0.5})]
    rec = recommend(inner, per_class=50)
    assert rec["strategy"] == "finetune" and rec["command"].endswith("--layer blocks.2")
    assert recommend([_row("m", {"knn": 1.0})], per_class=4)["strategy"] == "linear-probe"
    assert recommend([_row("m", {"knn": 1.0})], per_class=40)["strategy"] == "finetune"
    assert recommend([_row("m", {"knn": 1.0}, pretrained=False), _row("m", {"knn": 0.2})], per_class=40)["strategy"] == "scratch"


def test_stratified_subset_keeps_every_class(make_image_folder):
    data = load_data(str(make_image_folder(n=10)))
    sub = stratified_subset(data, 9, seed=0)
    assert len(sub) == 9 and np.bincount(sub.targets).tolist() == [3, 3, 3]
    assert stratified_subset(data, None, 0) is data


def test_rank_layers_and_zeroed_weights_warn_of_negative_transfer(make_image_folder, tiny_timm_weights, tmp_path, one_thread):
    data = make_image_folder(n=8)
    broken = _timm_folder(tmp_path / "zeroed", tiny_timm_weights, scale=0.0)
    report = rank(str(data), [str(broken)], image_size=32, progress=False)
    # zero weights give one constant feature vector: no score can prefer them to a random init
    assert [r.pretrained for r in report.rows] == [False, True]
    assert len(report.warnings) == 1 and "negative transfer likely" in report.warnings[0]
    assert report.recommendation["strategy"] == "scratch"

    good = _timm_folder(tmp_path / "weights", tiny_timm_weights)
    layered = rank(str(data), [str(good)], layers="all", scratch=False, progress=False, image_size=32)
    from transferkit.backbones import create_backbone
    from transferkit.backbones.layers import point_names

    names = point_names(create_backbone(str(good)))
    assert sorted(r.layer for r in layered.rows) == sorted(names)
    assert all(set(r.scores) >= {"logme", "hscore", "knn", "linear_cv"} for r in layered.rows)
    out = next(r for r in layered.rows if r.layer == "output")
    assert {"leep", "nce"} <= set(out.scores)  # the weights file has a classifier: source scores too
    assert all(r.mean_rank is not None for r in layered.rows)


def test_rank_order_does_not_depend_on_data_order(make_image_folder, tiny_timm_weights, tmp_path, one_thread):
    data = load_data(str(make_image_folder(n=8)))
    folder = _timm_folder(tmp_path / "w", tiny_timm_weights)
    perm = np.random.default_rng(3).permutation(len(data))
    a = rank(data, [str(folder)], layers="all", scratch=False, progress=False, image_size=32, cache=False)
    b = rank(data.subset(perm.tolist()), [str(folder)], layers="all", scratch=False, progress=False, image_size=32, cache=False)
    assert [r.layer for r in a.rows] == [r.layer for r in b.rows]
    for ra, rb in zip(a.rows, b.rows):
        for name in ("logme", "hscore", "knn", "leep", "nce"):
            if name in ra.scores:
                assert ra.scores[name] == pytest.approx(rb.scores[name], rel=1e-5, abs=1e-7)


def test_cli_rank_saves_report_and_fails_clearly(make_image_folder, tiny_timm_weights, tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.setenv("COLUMNS", "250")
    data = make_image_folder(n=6)
    folder = _timm_folder(tmp_path / "w", tiny_timm_weights)
    report = tmp_path / "rank.json"
    rc = main(["rank", "--data", str(data), "--backbones", str(folder), "--image-size", "32", "--no-progress", "--save", str(report)])
    text = capsys.readouterr().out
    assert rc == 0 and "recommended:" in text and "transferkit fit" in text
    saved = json.loads(report.read_text())
    assert len(saved["rows"]) == 2 and saved["n_classes"] == 3 and saved["recommendation"]["backbone"] == str(folder)

    one = make_image_folder(name="one", classes=("circle",), n=4)
    bad = [
        (["--data", str(one)], "1 class"),
        (["--data", str(data), "--scores", "logme,magic"], "Unknown transferability score 'magic'"),
        (["--data", str(data), "--layers", "nope"], "Unknown layer 'nope'"),
    ]
    for args, message in bad:
        target = tmp_path / "never.json"
        rc = main(["rank", *args, "--backbones", str(folder), "--image-size", "32", "--no-progress", "--save", str(target)])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not target.exists()


def test_features_with_nan_are_refused():
    from transferkit.errors import DataError
    from transferkit.transferability import compute_scores

    feats = torch.randn(20, 4)
    feats[3, 1] = float("nan")
    with pytest.raises(DataError, match="NaN or inf in 1 of 20 rows"):
        compute_scores(feats, [0, 1] * 10)
