"""The decode-once image store, the torchvision JPEG decoder, device augmentation, text length
grouping and ``--compile``; GPU checks skip without CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from transferkit.data import ImageReadError, decode_image, image_store
from transferkit.data import store as store_mod

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _photo(path: Path, w: int = 60, h: int = 45, seed: int = 0, mode: str = "RGB", orientation: int | None = None) -> Path:
    """A smooth gradient with a block: JPEG-friendly content (noise would not compress)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    c = rng.uniform(0.2, 1.0, 3)
    arr = np.stack([(xx / w * 255 * c[0]), (yy / h * 255 * c[1]), ((xx + yy) / (w + h) * 255 * c[2])], -1)
    x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    arr[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.uniform(0, 255, 3)
    im = Image.fromarray(arr.astype(np.uint8), "RGB").convert(mode)
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=95, **kwargs) if path.suffix == ".jpg" else im.save(path, **kwargs)
    return path


@pytest.fixture
def photos(tmp_path) -> list[str]:
    return [str(_photo(tmp_path / f"p{i}.{'png' if i == 3 else 'jpg'}", seed=i, w=60 + 7 * i)) for i in range(5)]


def _decode_each(paths, size):
    return torch.stack([decode_image(p, size) for p in paths])


def test_store_round_trip_equals_decoding_and_is_read_back(tk_cache, photos):
    stats: dict = {}
    first = image_store(photos, 24, stats=stats)
    assert first.dtype == torch.uint8 and first.shape == (5, 3, 24, 24)
    assert torch.equal(first, _decode_each(photos, 24))
    files = list((tk_cache / "images").glob("*.npy"))
    assert len(files) == 1 and stats == {"store_decoded": 1}

    again = image_store(photos, 24, stats=stats)
    assert torch.equal(again, first) and stats == {"store_decoded": 1, "store_hit": 1}
    # another resolution or interpolation is another entry
    image_store(photos, 20, stats=stats)
    image_store(photos, 24, "bilinear", stats=stats)
    assert stats["store_decoded"] == 3 and len(list((tk_cache / "images").glob("*.npy"))) == 3


def test_store_cache_invalidated_when_a_file_changes(tk_cache, photos):
    stats: dict = {}
    before = image_store(photos, 24, stats=stats)
    _photo(Path(photos[2]), seed=99, w=80)  # same name, new content
    after = image_store(photos, 24, stats=stats)
    assert stats == {"store_decoded": 2}
    assert not torch.equal(after[2], before[2])
    assert torch.equal(after[[0, 1, 3, 4]], before[[0, 1, 3, 4]])
    assert torch.equal(after, _decode_each(photos, 24))


def test_large_store_is_memory_mapped_and_equal(tk_cache, photos, monkeypatch):
    modes = []
    real_load = np.load
    monkeypatch.setattr(store_mod.np, "load", lambda *a, **k: modes.append(k.get("mmap_mode")) or real_load(*a, **k))
    small = image_store(photos, 24)
    mapped = image_store(photos, 24, mmap_bytes=0)
    assert modes == ["c"]  # the first call decodes (the store stays in memory), the second maps the cached file
    assert torch.equal(small, mapped)
    mapped[0].zero_()  # copy-on-write: the cached file is never changed
    assert torch.equal(image_store(photos, 24), small)


def test_broken_cache_entry_is_rebuilt(tk_cache, photos):
    first = image_store(photos, 24)
    (entry,) = (tk_cache / "images").glob("*.npy")
    entry.write_bytes(b"not a numpy file")
    stats: dict = {}
    assert torch.equal(image_store(photos, 24, stats=stats), first) and stats == {"store_decoded": 1}


def test_bad_file_leaves_no_cache_entry(tk_cache, photos, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("<html>not found</html>")
    with pytest.raises(ImageReadError) as err:
        image_store(photos + [str(bad)], 24)
    assert err.value.kind == "not_an_image"
    assert not list((tk_cache / "images").iterdir())  # no half-written store, no temporary left


def test_threaded_decoding_equals_serial(tk_cache, photos):
    assert torch.equal(image_store(photos, 24, workers=4, cache=False), image_store(photos, 24, workers=1, cache=False))


def test_torchvision_decoder_matches_pillow(tk_cache, tmp_path, photos):
    """The decoder used on CUDA, run here on the CPU: same pixels up to resampling differences,
    EXIF orientation and greyscale handled like Pillow, non-JPEG files decoded by Pillow."""
    extra = [str(_photo(tmp_path / "rot.jpg", w=64, h=40, seed=7, orientation=6)),
             str(_photo(tmp_path / "grey.jpg", seed=8, mode="L"))]
    paths = photos + extra
    pil = image_store(paths, 24, decoder="pil", cache=False)
    tv = image_store(paths, 24, decoder="torchvision", device="cpu", cache=False)
    diff = (pil.float() - tv.float()).abs().mean(dim=(1, 2, 3))
    assert (diff < 0.5).all(), diff  # measured 0.002-0.01 grey levels: the same libjpeg, near-identical resampling
    assert torch.equal(tv[3], pil[3])  # the PNG went through Pillow
    assert torch.equal(tv[6][0], tv[6][1]) and torch.equal(tv[6][1], tv[6][2])  # greyscale -> equal channels
    # cached under its own key
    stats: dict = {}
    image_store(paths, 24, decoder="torchvision", device="cpu", stats=stats)
    image_store(paths, 24, decoder="pil", stats=stats)
    assert stats == {"store_decoded": 2}


@pytest.mark.parametrize("made_for", ["cpu", "cuda"])  # sliced crops (CPU) or one batched warp (CUDA), both run here on the CPU
def test_augmenter_ranges_per_sample_and_seeded(made_for):
    from transferkit.backbones.base import ImagePreprocess
    from transferkit.inputs import Augmenter

    pre = ImagePreprocess(input_size=16, crop_pct=0.8)
    aug = Augmenter(pre, scale=(0.3, 1.0), device=made_for)
    assert aug.aug[0].flags["cropping_mode"] == ("resample" if made_for == "cuda" else "slice")
    ramp = torch.linspace(0, 1, 20).view(1, 1, 1, 20).expand(8, 3, 20, 20).contiguous()  # same image 8 times
    torch.manual_seed(0)
    out = aug(ramp)
    assert out.shape == (8, 3, 16, 16)
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6  # a crop resized: values stay in the input's range
    # per-sample randomness: the 8 copies of one image get different crops
    assert len({tuple(o[0, 0, [0, -1]].round(decimals=4).tolist()) for o in out}) >= 6
    # a crop covers 30-100% of the area: the horizontal extent of the ramp seen is within sqrt(0.3 * 3/4).. 1
    extent = out[:, 0, 8, -1] - out[:, 0, 8, 0]
    assert ((extent.abs() > 0.25) & (extent.abs() <= 1.0 + 1e-6)).all()
    torch.manual_seed(0)
    assert torch.equal(aug(ramp), out)  # seeded: the same crops
    no_flip = Augmenter(pre, hflip=False, device=made_for)
    assert (no_flip(ramp)[:, 0, 8, -1] >= no_flip(ramp)[:, 0, 8, 0]).all()  # without flips the ramp always rises


def test_length_grouped_keeps_samples_and_groups_lengths():
    from transferkit.inputs import length_grouped

    lengths = [int(v) for v in np.random.default_rng(0).integers(1, 200, 103)]
    order = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    grouped = length_grouped(order, lengths, batch_size=4, group=5)
    assert sorted(grouped.tolist()) == list(range(103))
    for start in range(0, 103, 20):  # each group of 5 batches: the same samples, longest first
        part = grouped[start : start + 20]
        assert set(part.tolist()) == set(order[start : start + 20].tolist())
        assert [lengths[i] for i in part] == sorted((lengths[i] for i in part), reverse=True)
    assert torch.equal(length_grouped(order, lengths, 4, 5), grouped)  # deterministic


def test_fit_compile_uses_torch_compile(tk_cache, make_image_folder, tiny_timm_weights, monkeypatch, one_thread):
    """``compile=True`` trains through ``torch.compile`` (here with the fast aot_eager backend; the
    default inductor backend takes minutes on a 2-core CPU) and keeps every batch the same shape."""
    import transferkit as tk

    folder = make_image_folder(n=6)
    real = torch.compile
    compiled = []

    def spy(module, **kwargs):
        compiled.append(type(module).__name__)
        return real(module, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", spy)
    common = dict(backbone="timm/test_efficientnet", backbone_weights=str(tiny_timm_weights), epochs=2, batch_size=4,
                  image_size=32, val_fraction=0.0, test_fraction=0.0, progress=False)
    res = tk.fit(folder, compile=True, out=tk_cache.parent / "run", **common)
    assert compiled == ["TimmBackbone"]
    steps = [line for line in (tk_cache.parent / "run" / "steps.jsonl").read_text().splitlines() if line]
    assert len(steps) == 2 * (18 // 4)  # the partial last batch (2 images) is dropped: one shape, no recompiles
    assert np.isfinite([r["train_loss"] for r in res.history if "train_loss" in r]).all()


@cuda
def test_gpu_store_and_decoder_match_cpu(tk_cache, photos):
    from transferkit.inputs import to_device

    cpu = image_store(photos, 24, decoder="torchvision", device="cpu", cache=False)
    gpu = image_store(photos, 24, decoder="torchvision", device="cuda", cache=False)
    assert (cpu.float() - gpu.float()).abs().mean() < 1.5
    on_device = to_device(gpu, torch.device("cuda"))
    assert on_device.is_cuda and torch.equal(on_device.cpu(), gpu)


@cuda
def test_gpu_fit_runs_bf16_channels_last(tk_cache, make_image_folder, tiny_timm_weights):
    import transferkit as tk

    folder = make_image_folder(n=6)
    res = tk.fit(folder, backbone="timm/test_efficientnet", backbone_weights=str(tiny_timm_weights), epochs=2,
                 batch_size=4, image_size=32, device="cuda", progress=False)
    paths = [str(p) for p in sorted(folder.rglob("*.png"))]
    on_gpu = res.model.predict_outputs(paths, device="cuda")
    on_cpu = res.model.predict_outputs(paths, device="cpu")
    assert np.abs(on_gpu - on_cpu).max() < 0.1  # bf16 on the GPU vs fp32 on the CPU
    assert np.isfinite([r["train_loss"] for r in res.history if "train_loss" in r]).all()
