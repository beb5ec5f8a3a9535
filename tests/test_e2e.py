"""End to end on the real offline pretrained models (EfficientNet-Lite0 for images, MiniLM for text).

These assert accuracy clearly above chance on real data: the embedded emoji (9 categories) and the
fortunes topics in ../shared/datasets. Small subsets and small inputs keep them within CI's budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import transferkit as tk
from transferkit.cli import main
from transferkit.data import TaskData
from transferkit.quickstart import embedded_emoji

FORTUNES = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "fortunes" / "fortunes.jsonl"


def _stratified_take(data: TaskData, per_class: int, seed: int = 0) -> TaskData:
    rng = np.random.default_rng(seed)
    idx = []
    for c in range(len(data.label_names)):
        members = np.flatnonzero(data.targets == c)
        idx += rng.permutation(members)[:per_class].tolist()
    return data.subset(sorted(idx))


@pytest.fixture(scope="module")
def emoji_small():
    train, test = embedded_emoji()
    return _stratified_take(train, 40), _stratified_take(test, 25)


@pytest.fixture(scope="module")
def fortunes_small():
    if not FORTUNES.is_file():
        pytest.skip("../shared/datasets/fortunes not present")
    topics = ["computers", "food", "sports", "startrek", "law"]
    rows = [json.loads(line) for line in FORTUNES.open(encoding="utf-8")]
    rows = [r for r in rows if r["label"] in topics]
    data = TaskData([r["text"] for r in rows], np.asarray([topics.index(r["label"]) for r in rows]), topics, "text")
    data.label_names = topics
    small = _stratified_take(data, 70, seed=1)
    train, _, test = tk.split_data(small, val=0.0, test=0.4, seed=0)
    return train, test


def test_emoji_linear_probe_real_model_beats_chance(emoji_small, tk_cache):
    train, test = emoji_small
    res = tk.fit(None, splits=(train, None, test), backbone="efficientnet_lite0", strategy="linear-probe", image_size=96, progress=False)
    acc = res.metrics["test"]["accuracy"]
    # 9 classes, balanced test: chance is 0.11; frozen ImageNet features separate emoji categories far better
    assert acc > 0.5, acc


def test_emoji_finetune_real_model_beats_scratch(emoji_small, tk_cache):
    train, test = emoji_small
    cmp = tk.compare(None, strategies=["finetune"], splits=(train, test, test), config=tk.FitConfig(
        backbone="efficientnet_lite0", image_size=64, epochs=4, batch_size=32, head_init="probe"), progress=False)
    ft, sc = cmp.row("finetune").mean, cmp.row("scratch").mean
    assert ft > 0.4, ft  # measured 0.449 (linear probe on the same subset: 0.62; 4 short epochs at 64 px)
    assert ft > sc + 0.15, (ft, sc)  # pretrained weights carry real knowledge: scratch cannot learn 9 classes from 360 images in 4 epochs
    assert not cmp.negative_transfer("finetune")


def test_text_linear_probe_minilm_beats_chance(fortunes_small, tk_cache):
    train, test = fortunes_small
    res = tk.fit(None, splits=(train, None, test), backbone="minilm", strategy="linear-probe", max_length=64, progress=False)
    assert res.metrics["test"]["accuracy"] > 0.6  # 5 topics: chance 0.2


def test_text_finetune_minilm_saves_loads_predicts(fortunes_small, tk_cache, tmp_path):
    train, test = fortunes_small
    res = tk.fit(None, splits=(train, None, test), backbone="minilm", strategy="finetune", head_init="probe",
                 max_length=48, epochs=1, batch_size=16, progress=False, out=tmp_path / "run")
    assert res.metrics["test"]["accuracy"] > 0.5
    loaded = tk.load(tmp_path / "run")
    texts = test.inputs[:8]
    before = res.model.predict_outputs(texts)
    after = loaded.predict_outputs(texts)
    np.testing.assert_allclose(before, after, atol=1e-5)
    assert loaded.backbone.preprocess.max_length == 48
    assert (tmp_path / "run" / "model" / "backbone" / "tokenizer.json").is_file() or (tmp_path / "run" / "model" / "backbone" / "vocab.txt").is_file()


def test_quickstart_cli_small(tk_cache, tmp_path, capsys):
    code = main(["quickstart", "--out", str(tmp_path / "qs"), "--image-size", "32", "--epochs", "1", "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    for name in ("linear-probe", "finetune", "scratch"):
        assert name in text
    model_dir = tmp_path / "qs" / "model"
    assert (model_dir / "model.safetensors").is_file()
    image = next(iter(sorted((Path(tk.__file__).parent / "_assets" / "emoji" / "images").glob("*.png"))))
    assert main(["predict", str(model_dir), str(image), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert abs(sum(pred["probabilities"].values()) - 1) < 1e-3
