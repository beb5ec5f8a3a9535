"""Model stacking (strategy ``stack``): concatenated features of several backbones, and a meta-learner
on out-of-fold base-learner probabilities. Tiny offline models only."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch

import transferkit.strategies.stack as stack
from transferkit.backbones import create_backbone
from transferkit.backbones.concat import ConcatBackbone
from transferkit.config import FitConfig
from transferkit.data.dataset import load_data
from transferkit.errors import ConfigError
from transferkit.features import compute_features
from transferkit.model import TransferModel

pytestmark = pytest.mark.usefixtures("tk_cache", "one_thread")

# two tiny timm folders whose preprocessing differs in size, field of view and mean/std
PRE_A = {"input_size": [3, 32, 32], "crop_pct": 0.875, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25], "interpolation": "bicubic"}
PRE_B = {"input_size": [3, 48, 48], "crop_pct": 1.0, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear"}


def _timm_folder(root, name, pre, seed):
    import timm
    from safetensors.torch import save_file

    folder = root / name
    folder.mkdir()
    torch.manual_seed(seed)
    model = timm.create_model("test_efficientnet", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "test_efficientnet", "pretrained_cfg": pre}))
    return folder


@pytest.fixture(scope="module")
def timm_pair(tmp_path_factory):
    pytest.importorskip("timm")
    root = tmp_path_factory.mktemp("stack-timm")
    return _timm_folder(root, "a", PRE_A, 1), _timm_folder(root, "b", PRE_B, 2)


@pytest.fixture(scope="module")
def bert16_dir(tmp_path_factory, tiny_bert_dir):
    """Another tiny BERT (16-d) with the same (MiniLM) tokenizer as ``tiny_bert_dir``."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert16")
    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    torch.manual_seed(3)
    BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                         vocab_size=len(tok), max_position_embeddings=128)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def other_vocab_bert(tmp_path_factory):
    """A tiny BERT with its own 9-token vocabulary (a different tokenizer)."""
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert-vocab")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "a"]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=9,
                         max_position_embeddings=64)).save_pretrained(folder)
    return folder


def _text_data(tmp_path, n=10):
    rng = np.random.default_rng(0)
    pos, neg = ["great", "lovely", "superb", "happy"], ["awful", "bad", "dreadful", "sad"]
    rows = ["text,label"]
    for i in range(n):
        for label, words in (("pos", pos), ("neg", neg)):
            rows.append(f"{' '.join(rng.choice(words, 3))} film {i},{label}")
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(rows) + "\n")
    return load_data(path)


def _cfg(**kw):
    return FitConfig(strategy="stack", device="cpu", stack_folds=3, **kw)


# ---------------------------------------------------------------------------- out-of-fold
ORIGINAL_BASE = stack.base_estimator


class RecordingPipeline:
    """Stands in for the base learner: a real scaler + logistic regression that records the rows it
    was fit on and every probability it hands out."""

    log: list = []

    def __init__(self, c, seed):
        self.inner = ORIGINAL_BASE(c, seed)

    def fit(self, x, y):
        self.fit_rows = {r.tobytes() for r in np.asarray(x)}
        self.inner.fit(x, y)
        self.classes_ = self.inner.classes_
        return self

    def predict_proba(self, x):
        p = self.inner.predict_proba(x)
        RecordingPipeline.log.append((self.fit_rows, [r.tobytes() for r in np.asarray(x)], p))
        return p

    def __getitem__(self, k):
        return self.inner[k]


def _rows_with_leaked_probabilities(meta_x, member_rows, n_classes, log):
    """Rows whose meta-learner input (any member's block) does not come from a base fit that
    excluded the row: its exact probabilities are only produced by fits that saw the row, or nowhere."""
    bad = set()
    for i, rows in enumerate(member_rows):
        block = meta_x[:, i * n_classes : (i + 1) * n_classes]
        for j, key in enumerate(rows):
            sources = [fit_rows for fit_rows, pred_rows, p in log
                       for k, r in enumerate(pred_rows) if r == key and np.array_equal(p[k], block[j])]
            if not sources or any(key in s for s in sources):
                bad.add(j)
    return bad


def _fit_recorded(monkeypatch, timm_pair, data, oof_impl=None):
    RecordingPipeline.log = []
    metas = []

    class RecordingMeta:
        def __init__(self, c, seed):
            from sklearn.linear_model import LogisticRegression

            self.inner = LogisticRegression(C=c, max_iter=3000, random_state=seed)

        def fit(self, x, y):
            metas.append(np.array(x))
            self.inner.fit(x, y)
            self.classes_, self.coef_, self.intercept_ = self.inner.classes_, self.inner.coef_, self.inner.intercept_
            return self

        def predict_proba(self, x):
            return self.inner.predict_proba(x)

    monkeypatch.setattr(stack, "base_estimator", lambda c, seed: RecordingPipeline(c, seed))
    monkeypatch.setattr(stack, "meta_estimator", lambda c, seed: RecordingMeta(c, seed))
    if oof_impl is not None:
        monkeypatch.setattr(stack, "out_of_fold_proba", oof_impl)
    a, b = timm_pair
    model = stack.Stack().fit(data, None, _cfg(backbones=f"{a},{b}", stack="oof"), progress=False)
    bb = model.backbone
    member_rows = [[r.tobytes() for r in stack.member_features(bb.member_view(i), data).double().numpy()] for i in range(2)]
    return model, metas[-1], member_rows  # the last meta fit is the final one, on all training rows


def test_oof_meta_learner_never_sees_a_rows_own_prediction(monkeypatch, timm_pair, make_image_folder):
    data = load_data(make_image_folder(n=9))
    model, meta_x, member_rows = _fit_recorded(monkeypatch, timm_pair, data)
    n = data.num_outputs
    assert meta_x.shape == (len(data), 2 * n)
    assert _rows_with_leaked_probabilities(meta_x, member_rows, n, RecordingPipeline.log) == set()

    # the same numbers from an explicit K-fold recomputation with sklearn's own cross_val_predict
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(np.zeros(len(data)), data.targets))
    for i, c in enumerate(model.info["stack"]["member_C"]):
        x = stack.member_features(model.backbone.member_view(i), data).double().numpy()
        want = cross_val_predict(ORIGINAL_BASE(c, 0), x, data.targets, cv=folds, method="predict_proba")
        np.testing.assert_allclose(meta_x[:, i * n : (i + 1) * n], want, rtol=0, atol=1e-10)


def test_the_leak_check_catches_in_sample_predictions(monkeypatch, timm_pair, make_image_folder):
    """The check above can fail: base probabilities from a fit on all rows are flagged for every row."""

    def in_sample(x, y, n_classes, folds, make_estimator):
        return stack.class_proba(make_estimator().fit(x, y), x, n_classes)

    data = load_data(make_image_folder(n=9))
    _, meta_x, member_rows = _fit_recorded(monkeypatch, timm_pair, data, oof_impl=in_sample)
    assert _rows_with_leaked_probabilities(meta_x, member_rows, data.num_outputs, RecordingPipeline.log) == set(range(len(data)))


# ---------------------------------------------------------------------------- concatenation
def test_member_with_other_preprocessing_gets_its_own_input(timm_pair):
    """Outer input: 48 px (B's size, widest view), a 3 px red border (48 * (1 - 0.875) / 2) around blue.
    A sees the centre 42 px (its 0.875 field of view), so no red, resized to 32 px, normalised with
    A's mean/std; B (the outer preprocessing) gets the batch unchanged."""
    a, b = (create_backbone(str(p)).eval() for p in timm_pair)
    bb = ConcatBackbone([a, b]).eval()
    assert bb.preprocess.input_size == 48 and bb.preprocess.crop_pct == 1.0 and bb.preprocess.mean == (0.5, 0.5, 0.5)
    img = torch.zeros(1, 3, 48, 48)
    img[:, 0] = 1.0  # red everywhere ...
    img[:, :, 3:45, 3:45] = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)  # ... but the centre 42 px is blue
    x = (img - 0.5) / 0.5
    seen = {}
    for name, m in (("a", a), ("b", b)):
        m.model.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0].clone()))
    with torch.no_grad():
        out = bb(x)
    want_a = ((torch.tensor([0.0, 0.0, 1.0]) - torch.tensor(PRE_A["mean"])) / torch.tensor(PRE_A["std"])).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    assert seen["a"].shape == (1, 3, 32, 32)
    torch.testing.assert_close(seen["a"], want_a, atol=1e-5, rtol=0)
    assert torch.equal(seen["b"], x)
    assert out.shape == (1, 256 + 256)


def test_concat_features_are_the_normalised_member_features_side_by_side(timm_pair, make_image_folder):
    data = load_data(make_image_folder(n=4))
    a, b = (create_backbone(str(p)) for p in timm_pair)
    bb = ConcatBackbone([a, b])
    assert bb.member_view(1) is b and bb.member_view(0) is not a  # only A needs its input converted
    feats = [stack.member_features(bb.member_view(i), data) for i in range(2)]
    bb.set_normalisation(feats)
    got = compute_features(bb, data.inputs, device="cpu")
    want = torch.cat([(f - f.mean(0)) / f.std(0, unbiased=False) / math.sqrt(f.shape[1]) for f in feats], dim=1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # every block: mean 0 and squared norm ~1 per row, so no member dominates by width
    for sl in bb.slices():
        assert got[:, sl].mean(0).abs().max() < 1e-4
        assert abs(float(got[:, sl].pow(2).sum(1).mean()) - 1.0) < 1e-3
    # unnormalised: the raw member features side by side
    raw = ConcatBackbone([a, b], normalise=False)
    torch.testing.assert_close(compute_features(raw, data.inputs, device="cpu"), torch.cat(feats, 1), atol=1e-5, rtol=1e-5)


def test_text_members_share_the_batch_and_layer_groups_cover_every_parameter(tiny_bert_dir, bert16_dir):
    a = create_backbone(str(tiny_bert_dir))
    cut = create_backbone(str(tiny_bert_dir), layer="encoder.layer.0")
    c = create_backbone(str(bert16_dir))
    bb = ConcatBackbone([a, cut, c], normalise=False).eval()
    texts = ["a short one", "a somewhat longer text about a film"]
    got = compute_features(bb, texts, device="cpu")
    want = torch.cat([compute_features(m, texts, device="cpu") for m in (a, cut, c)], dim=1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    groups = bb.layer_groups()
    names = [n for g in groups for n in g]
    assert sorted(names) == sorted(n for n, _ in bb.named_parameters()) and len(names) == len(set(names))
    assert any(n.startswith("members.2.") for n in groups[-1]) and any(n.startswith("members.0.") for n in groups[-1])


# ---------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("mode", ["concat", "oof"])
def test_image_stack_saves_and_loads_with_the_same_predictions(mode, timm_pair, make_image_folder, tmp_path):
    data = load_data(make_image_folder(n=6))
    a, b = timm_pair
    model = stack.Stack().fit(data, None, _cfg(backbones=f"{a},{b}", stack=mode), progress=False)
    assert model.info["stack"]["mode"] == mode and model.info["stack"]["selected_on" if mode == "concat" else "meta_selected_on"] == "cv"
    before = model.predict_outputs(data.inputs, device="cpu")
    # the saved head reproduces the fitted sklearn models on the cached features
    feats = [stack.member_features(model.backbone.member_view(i), data) for i in range(2)]
    head_out = model.head(model.backbone.combine(feats)).detach().numpy()
    np.testing.assert_allclose(before, head_out, atol=1e-4)
    model.save(tmp_path / "m")
    loaded = TransferModel.load(tmp_path / "m")
    assert isinstance(loaded.backbone, ConcatBackbone) and loaded.head_spec["kind"] == ("stack" if mode == "oof" else "linear")
    np.testing.assert_array_equal(loaded.predict_outputs(data.inputs, device="cpu"), before)


@pytest.mark.parametrize("mode", ["concat", "oof"])
def test_text_stack_saves_each_members_tokenizer_and_config(mode, tiny_bert_dir, bert16_dir, tmp_path):
    data = _text_data(tmp_path)
    model = stack.Stack().fit(data, data.subset(range(6)), _cfg(backbones=f"{tiny_bert_dir},{tiny_bert_dir}@encoder.layer.0,{bert16_dir}",
                                                                  stack=mode), progress=False)
    assert model.info["stack"]["selected_on" if mode == "concat" else "meta_selected_on"] == "val"
    before = model.predict_outputs(data.inputs, device="cpu")
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m" / "members").iterdir()) == ["0", "1", "2"]  # no shared backbone/ folder
    loaded = TransferModel.load(tmp_path / "m")
    assert [m.num_features for m in loaded.backbone.members] == [32, 32, 16]
    np.testing.assert_array_equal(loaded.predict_outputs(data.inputs, device="cpu"), before)
    assert loaded.predict(["great lovely film"])[0]["label"] in ("neg", "pos")


# ---------------------------------------------------------------------------- bad input
def _one_line(err) -> str:
    s = str(err.value)
    assert "\n" not in s and "Fix:" in s
    return s


def test_bad_input_is_one_clear_error(timm_pair, tiny_bert_dir, other_vocab_bert, tmp_path):
    a, b = timm_pair
    with pytest.raises(ConfigError) as e:
        FitConfig(strategy="stack", backbones="efficientnet_lite0")
    assert "fewer than two" in _one_line(e)
    with pytest.raises(ConfigError) as e:
        FitConfig(strategy="stack", backbones=f"{a},{b}", stack="blend")
    assert "--stack 'blend'" in _one_line(e) and "concat, oof" in str(e.value)
    data = _text_data(tmp_path)
    with pytest.raises(ConfigError) as e:
        stack.Stack().fit(data, None, _cfg(), progress=False)  # no --backbones
    assert "--backbones" in _one_line(e)
    with pytest.raises(ConfigError) as e:
        stack.Stack().fit(data, None, _cfg(backbones=f"{a},{tiny_bert_dir}"), progress=False)
    assert "image" in _one_line(e) and "text" in str(e.value)
    with pytest.raises(ConfigError) as e:
        stack.Stack().fit(data, None, _cfg(backbones=f"{tiny_bert_dir},{other_vocab_bert}"), progress=False)
    assert "different tokenizers" in _one_line(e)
    with pytest.raises(ConfigError) as e:
        stack.Stack().fit(data, None, _cfg(backbones=f"{tiny_bert_dir},{tiny_bert_dir}"), progress=False)
    assert "twice" in _one_line(e)


def test_cli_rejects_a_single_backbone_and_an_unknown_mode(tmp_path):
    from transferkit.cli import main

    for extra, needle in ((["--backbones", "minilm"], "--backbones"), (["--backbones", "minilm,minilm@encoder.layer.3", "--stack", "x"], "--stack")):
        o, e = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
            rc = main(["fit", str(tmp_path), "--strategy", "stack", *extra])
        lines = [ln for ln in e.getvalue().splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1 and needle in lines[0], e.getvalue()


def test_fit_api_runs_the_stack_strategy_end_to_end(tiny_bert_dir, tmp_path):
    import transferkit as tk

    path = tmp_path / "data"
    path.mkdir()
    data = _text_data(path)
    res = tk.fit(path / "reviews.csv", strategy="stack", backbones=f"{tiny_bert_dir},{tiny_bert_dir}@encoder.layer.0", stack="oof",
                 stack_folds=3, device="cpu", out=tmp_path / "run", progress=False)
    assert set(res.metrics) == {"val", "test"} and res.model.info["stack"]["members"][1].endswith("@encoder.layer.0")
    loaded = tk.load(tmp_path / "run" / "model")
    np.testing.assert_array_equal(loaded.predict_outputs(data.inputs, device="cpu"), res.model.predict_outputs(data.inputs, device="cpu"))
