"""Throughput: transferkit against the GPU-only ceiling and a conventional PyTorch/timm pipeline.

One run measures, side by side, on the same device with the same batch size, image size, number
of classes and precision (bf16 autocast + channels_last on CUDA, fp32 on CPU):

Images, for each ``--models`` entry (``efficientnet_lite0``: the offline ImageNet weights;
``timm/<arch>``: random init, trained by transferkit with ``strategy="scratch"`` since the hub is
not reachable):

- (a) GPU-only ceiling: train steps (forward, backward, AdamW, fused on CUDA) of the same
  backbone + linear head on one synthetic batch already on the device; 5 warm-up steps, then
  ``--ceiling-steps`` timed steps.
- (b) ``transferkit.fit`` end to end from the JPEG files (no validation/test split, no early
  stopping): wall-clock of the whole call, run twice in one fresh ``TRANSFERKIT_CACHE`` per model:
  COLD (nothing of the data cached: every file is decoded) and WARM (same cache again; a decoded
  image store kept on disk by transferkit is reused). img/s = n_train * epochs / seconds. Also the
  per-epoch steady state (from the run's history: median of epochs 2.., or epoch 1 if only one) and
  the setup time (whole call minus the epochs: screening, decoding, model creation).
- (c) conventional loop: a ``Dataset`` opening each JPEG with PIL, torchvision RandomResizedCrop +
  flip + ToTensor + Normalize, ``DataLoader(num_workers=--workers, pin_memory on CUDA,
  persistent_workers, drop_last)``, the same model/optimiser/precision as (a) (timm's own model
  for ``timm/<arch>``; the transferkit backbone + linear head for EfficientNet-Lite); one untimed
  warm-up epoch, then ``--conv-epochs`` timed epochs.
- feature extraction: ``transferkit.features.extract_features(..., cache=False)`` on the folder's
  ``TaskData`` (COLD and WARM image store, as for (b)), against the pure forward ceiling: the same
  backbone in eval mode under ``torch.no_grad`` on a synthetic batch of ``--feature-batch-size``
  already on the device.

Ratios: b/a and b/c (from the WARM run; COLD and steady state given too) and features/forward.
Targets (meaningful on CUDA): b/a >= 0.80, b/c >= 3, features/forward >= 0.90.

Text (BERT-size, random init: a WordPiece tokenizer trained here on the texts, a ``BertModel``
saved as a local Hugging Face folder): ``transferkit.fit`` on a JSONL manifest against a plain
``transformers.Trainer`` loop (``AutoModelForSequenceClassification`` + ``DataCollatorWithPadding``,
default options), both timed end to end (model loading, tokenisation and training); and
``extract_features`` against the pure no_grad forward over the same length-sorted batches,
tokenised and on the device beforehand. Texts: ``../shared/datasets/fortunes/fortunes.jsonl``
when present (25 topics), else generated sentences.

Every number comes from a timing taken in this run. cuDNN/TF32 flags are reset to their values at
start before each measurement, so what one measurement (e.g. ``tk.fit``) sets does not leak into
the next. transferkit's cache (``TRANSFERKIT_CACHE``) is pointed at fresh folders under the work dir
(one per model for fitting, one for feature extraction, one for text), never at your own cache.
"COLD" is transferkit's cache only: the JPEG files are in the OS page cache either way.

Commands (from the project root):

    # CPU, tiny (about 30 s on 2 cores; --workers 0 keeps the PIL loader in the main process)
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/throughput.py --device cpu \\
        --n-images 64 --image-size 64 --batch-size 16 --epochs 1 --models efficientnet_lite0 \\
        --text-model-size tiny --text-n 64 --workers 0

    # GPU, full defaults (4,096 generated JPEGs, EfficientNet-Lite0 + ResNet-50 at 224 px, batch 256,
    # 3 epochs; BERT-base, 4,096 texts of at most 128 tokens, batch 64, 2 epochs; meant to finish within
    # 10 minutes on one H100: not timed there yet, the progress log on stderr shows elapsed seconds)
    HF_HUB_OFFLINE=1 python benchmarks/throughput.py --json-out benchmarks/results/throughput_h100.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TARGETS = {"b/a": 0.80, "b/c": 3.0, "features/forward": 0.90}
_T0 = time.perf_counter()


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device_layout(model: nn.Module, device: torch.device) -> nn.Module:
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def frees_memory(fn):
    """Collect garbage (and the CUDA cache) after ``fn`` returns, when its models are out of scope."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            free_memory()

    return wrapper


_FLAGS: dict[str, Any] = {}


def save_backend_flags() -> None:
    _FLAGS.update(cudnn_benchmark=torch.backends.cudnn.benchmark, matmul_precision=torch.get_float32_matmul_precision())


def reset_backend_flags() -> None:
    """Every measurement starts from the flags the process started with."""
    torch.backends.cudnn.benchmark = _FLAGS["cudnn_benchmark"]
    torch.set_float32_matmul_precision(_FLAGS["matmul_precision"])


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """(result, wall seconds), with the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


@contextlib.contextmanager
def transferkit_cache(path: Path):
    """Point transferkit's disk cache at ``path`` (created empty) for the duration."""
    old = os.environ.get("TRANSFERKIT_CACHE")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["TRANSFERKIT_CACHE"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("TRANSFERKIT_CACHE", None)
        else:
            os.environ["TRANSFERKIT_CACHE"] = old


def fit_config_has(name: str) -> bool:
    from transferkit.config import FitConfig

    return name in {f.name for f in dataclasses.fields(FitConfig)}


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    return torch.compile(model) if enabled else model


def environment(device: torch.device) -> dict[str, Any]:
    import timm
    import transformers

    import transferkit

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "device_type": device.type,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "transformers": transformers.__version__,
        "transferkit": transferkit.__version__,
        "git_commit": commit,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "precision": "bf16 autocast + channels_last" if device.type == "cuda" else "fp32",
    }


# --------------------------------------------------------------------------- image data


def synthetic_jpeg(rng: np.random.Generator, cls: int, n_classes: int, width: int = 500, height: int = 375):
    """A smooth picture: a two-colour gradient in a class-dependent hue plus a few shapes."""
    import colorsys

    from PIL import Image, ImageDraw

    hue = (cls + rng.uniform(-0.2, 0.2)) / n_classes % 1.0
    c0 = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.4, 0.9), rng.uniform(0.5, 1.0))) * 255
    c1 = np.array(colorsys.hsv_to_rgb((hue + 0.15) % 1.0, rng.uniform(0.2, 0.7), rng.uniform(0.2, 0.8))) * 255
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    pixels = (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]).astype(np.uint8)
    im = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        x1, y1 = x0 + int(rng.integers(30, 200)), y0 + int(rng.integers(30, 150))
        shade = colorsys.hsv_to_rgb((hue + rng.uniform(-0.1, 0.1)) % 1.0, rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0))
        fill = tuple(int(v * 255) for v in shade)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    return im


def _write_jpegs(folder: Path, indices: range, n_classes: int, seed: int) -> None:
    for i in indices:
        c = i % n_classes
        rng = np.random.default_rng([seed, i])  # per image: the same files whatever the number of processes
        synthetic_jpeg(rng, c, n_classes).save(folder / f"class_{c:02d}" / f"{i:06d}.jpg", quality=90)


def generate_images(folder: Path, n: int, n_classes: int, processes: int = 0, seed: int = 0) -> None:
    """``n`` JPEGs (500x375, quality 90), class ``i % n_classes`` for image ``i``; in ``processes`` processes when > 1."""
    for c in range(n_classes):
        (folder / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
    if processes <= 1:
        _write_jpegs(folder, range(n), n_classes, seed)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_write_jpegs, [folder] * processes, [range(k, n, processes) for k in range(processes)],
                      [n_classes] * processes, [seed] * processes))


def image_files(folder: Path) -> tuple[list[str], list[int], list[str]]:
    """(paths, labels, class names) of a folder with one subfolder of JPEG/PNG images per class."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted((folder / c).rglob("*")):
            if f.is_file() and f.suffix.lower() in (".jpg", ".jpeg", ".png"):
                paths.append(str(f))
                labels.append(i)
    return paths, labels, classes


# --------------------------------------------------------------------------- image models


def is_random_init(name: str) -> bool:
    """``timm/<arch>`` has no offline weights: random init (transferkit strategy ``scratch``)."""
    return name.startswith("timm/")


def build_image_model(name: str, n_classes: int, image_size: int) -> nn.Module:
    """The transferkit backbone (pooled features [B, D]) followed by a linear head."""
    from transferkit.backbones import create_backbone

    backbone = create_backbone(name, pretrained=not is_random_init(name), image_size=image_size)
    return nn.Sequential(backbone, nn.Linear(backbone.num_features, n_classes))


def build_conventional_model(name: str, n_classes: int, image_size: int) -> nn.Module:
    """What a timm user writes (``timm.create_model(arch, num_classes=C)``); EfficientNet-Lite keeps
    the transferkit backbone + linear head so that the network is the one of (a)."""
    if is_random_init(name):
        import timm

        return timm.create_model(name[5:], pretrained=False, num_classes=n_classes)
    return build_image_model(name, n_classes, image_size)


def make_optimizer(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
    with autocast(device):
        loss = nn.functional.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def synthetic_images(batch: int, size: int, n_classes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, n_classes, (batch,), device=device)


@frees_memory
def measure_train_ceiling(name: str, args, n_classes: int, device: torch.device) -> dict[str, Any]:
    """(a): img/s of train steps on a synthetic batch already on the device."""
    model = maybe_compile(to_device_layout(build_image_model(name, n_classes, args.image_size), device), args.compile).train()
    opt = make_optimizer(model, device)
    x, y = synthetic_images(args.batch_size, args.image_size, n_classes, device)
    for _ in range(args.warmup_steps):
        train_step(model, opt, x, y, device)

    def run():
        for _ in range(args.ceiling_steps):
            train_step(model, opt, x, y, device)

    _, seconds = timed(run, device)
    n = args.ceiling_steps * args.batch_size
    return {"img_s": n / seconds, "seconds": seconds, "images": n, "steps": args.ceiling_steps}


@frees_memory
@torch.no_grad()
def measure_forward_ceiling(name: str, args, n_classes: int, device: torch.device) -> dict[str, Any]:
    """Pure forward of the backbone (eval, no_grad) on a synthetic batch already on the device."""
    from transferkit.backbones import create_backbone

    backbone = to_device_layout(create_backbone(name, pretrained=not is_random_init(name), image_size=args.image_size), device).eval()
    x, _ = synthetic_images(args.feature_batch_size, args.image_size, n_classes, device)

    def run():
        for _ in range(args.ceiling_steps):
            with autocast(device):
                backbone(x)

    for _ in range(args.warmup_steps):
        with autocast(device):
            backbone(x)
    _, seconds = timed(run, device)
    n = args.ceiling_steps * args.feature_batch_size
    return {"img_s": n / seconds, "seconds": seconds, "images": n, "batch_size": args.feature_batch_size}


# --------------------------------------------------------------------------- (b) transferkit fit


def fit_kwargs(args, device: torch.device) -> dict[str, Any]:
    kw: dict[str, Any] = dict(progress=False, batch_size=args.batch_size, val_fraction=0.0, test_fraction=0.0, patience=0,
                              device=device.type, backbone_weights=None)
    if args.compile:
        if fit_config_has("compile"):
            kw["compile"] = True
        else:
            log("warning: this transferkit's FitConfig has no 'compile' option; tk.fit runs uncompiled")
    return kw


def summarise_fit(result, seconds: float, epochs: int, unit: str) -> dict[str, Any]:
    """img/s (or seq/s) of the whole call, the per-epoch steady state and the setup time."""
    n_train = int(result.model.info.get("data", {}).get("n_train", 0))
    epoch_s = [float(r["seconds"]) for r in (result.history or []) if "seconds" in r]
    steady = float(np.median(epoch_s[1:] if len(epoch_s) > 1 else epoch_s)) if epoch_s else float("nan")
    return {
        f"{unit}_s": n_train * epochs / seconds,
        "seconds": seconds,
        "n_train": n_train,
        "epochs_run": len(epoch_s),
        "epoch_seconds": epoch_s,
        f"steady_{unit}_s": n_train / steady if epoch_s else None,
        "setup_seconds": seconds - sum(epoch_s) if epoch_s else None,
        "fit_seconds_reported": result.seconds,
    }


@frees_memory
def measure_tk_fit(data, args, device: torch.device, *, epochs: int, unit: str, **options: Any) -> dict[str, Any]:
    import transferkit as tk

    reset_backend_flags()
    kw = {**fit_kwargs(args, device), "epochs": epochs, **options}
    result, seconds = timed(lambda: tk.fit(str(data), **kw), device)
    out = summarise_fit(result, seconds, epochs, unit)
    out["options"] = {k: v for k, v in kw.items() if k != "progress"}
    return out


# --------------------------------------------------------------------------- (c) conventional loop


class PILImageDataset(torch.utils.data.Dataset):
    """The usual recipe: open each file with PIL in ``__getitem__`` and apply torchvision transforms."""

    def __init__(self, paths: list[str], labels: list[int], transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            image = im.convert("RGB")
        return self.transform(image), self.labels[i]


def conventional_loader(paths: list[str], labels: list[int], args, device: torch.device):
    from torchvision import transforms as T

    transform = T.Compose([
        T.RandomResizedCrop(args.image_size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    return torch.utils.data.DataLoader(
        PILImageDataset(paths, labels, transform), batch_size=min(args.batch_size, len(paths)), shuffle=True,
        num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0, drop_last=True,
    )


def conventional_epoch(model: nn.Module, opt, loader, device: torch.device) -> int:
    seen = 0
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        train_step(model, opt, x, y, device)
        seen += len(y)
    return seen


@frees_memory
def measure_conventional(name: str, paths: list[str], labels: list[int], n_classes: int, args, device: torch.device) -> dict[str, Any]:
    """(c): one untimed warm-up epoch (workers start, cuDNN picks kernels), then timed epochs."""
    reset_backend_flags()
    model = build_conventional_model(name, n_classes, args.image_size)
    model = maybe_compile(to_device_layout(model, device), args.compile).train()
    opt = make_optimizer(model, device)
    loader = conventional_loader(paths, labels, args, device)
    conventional_epoch(model, opt, loader, device)

    def run():
        return sum(conventional_epoch(model, opt, loader, device) for _ in range(args.conv_epochs))

    seen, seconds = timed(run, device)
    return {"img_s": seen / seconds, "seconds": seconds, "images": seen, "epochs": args.conv_epochs, "workers": args.workers}


# --------------------------------------------------------------------------- feature extraction


@frees_memory
def measure_tk_features(name: str, data, args, device: torch.device, batch_size: int, **backbone_kw: Any) -> dict[str, Any]:
    """``extract_features(cache=False)`` wall time; the backbone is created before the clock starts."""
    from transferkit.backbones import create_backbone
    from transferkit.features import extract_features

    reset_backend_flags()
    backbone = create_backbone(name, **backbone_kw)
    feats, seconds = timed(lambda: extract_features(backbone, data, batch_size=batch_size, device=device.type, cache=False), device)
    assert feats.shape[0] == len(data)
    return {"img_s": len(data) / seconds, "seconds": seconds, "n": len(data), "batch_size": batch_size}


# --------------------------------------------------------------------------- image benchmark


def benchmark_image_model(name: str, folder: Path, cache_root: Path, args, device: torch.device) -> dict[str, Any]:
    import transferkit as tk

    paths, labels, classes = image_files(folder)
    n_classes = len(classes)
    safe = name.replace("/", "_")
    out: dict[str, Any] = {"model": name, "random_init": is_random_init(name), "n_images": len(paths), "classes": n_classes,
                           "tk_strategy": "scratch" if is_random_init(name) else "finetune"}
    with transferkit_cache(cache_root / f"{safe}-fit"):
        # the ceiling builds the backbone first: converted weights land in this cache, so the cold
        # fit below pays for decoding the data, not for converting weights
        log(f"{name}: (a) train-step ceiling, {args.warmup_steps} + {args.ceiling_steps} steps of {args.batch_size}")
        reset_backend_flags()
        out["ceiling_train"] = measure_train_ceiling(name, args, n_classes, device)
        log(f"  {out['ceiling_train']['img_s']:.1f} img/s")
        fit = dict(backbone=name, strategy=out["tk_strategy"], image_size=args.image_size)
        for run in ("cold", "warm"):
            log(f"{name}: (b) transferkit fit, {run} cache, {args.epochs} epochs")
            out[f"tk_fit_{run}"] = measure_tk_fit(folder, args, device, epochs=args.epochs, unit="img", **fit)
            log(f"  {out[f'tk_fit_{run}']['img_s']:.1f} img/s end to end ({out[f'tk_fit_{run}']['seconds']:.1f} s)")
        log(f"{name}: (c) conventional PIL DataLoader loop, workers={args.workers}")
        out["conventional"] = measure_conventional(name, paths, labels, n_classes, args, device)
        log(f"  {out['conventional']['img_s']:.1f} img/s")
    with transferkit_cache(cache_root / f"{safe}-features"):
        # as above: the forward ceiling converts the weights into this cache before the cold extraction
        log(f"{name}: forward ceiling, batch {args.feature_batch_size}")
        reset_backend_flags()
        out["ceiling_forward"] = measure_forward_ceiling(name, args, n_classes, device)
        log(f"  {out['ceiling_forward']['img_s']:.1f} img/s")
        data = tk.load_data(folder)
        for run in ("cold", "warm"):
            log(f"{name}: transferkit extract_features, {run} cache")
            out[f"tk_features_{run}"] = measure_tk_features(
                name, data, args, device, args.feature_batch_size, pretrained=not is_random_init(name), image_size=args.image_size
            )
            log(f"  {out[f'tk_features_{run}']['img_s']:.1f} img/s")
    out["ratios"] = image_ratios(out)
    return out


def image_ratios(r: dict[str, Any]) -> dict[str, float]:
    a, c, fwd = r["ceiling_train"]["img_s"], r["conventional"]["img_s"], r["ceiling_forward"]["img_s"]
    warm, cold = r["tk_fit_warm"], r["tk_fit_cold"]
    out = {
        "b/a": warm["img_s"] / a, "b/a_cold": cold["img_s"] / a,
        "b/c": warm["img_s"] / c, "b/c_cold": cold["img_s"] / c,
        "features/forward": r["tk_features_warm"]["img_s"] / fwd, "features/forward_cold": r["tk_features_cold"]["img_s"] / fwd,
    }
    if warm.get("steady_img_s"):
        out["b/a_steady"] = warm["steady_img_s"] / a
        out["b/c_steady"] = warm["steady_img_s"] / c
    return out


# --------------------------------------------------------------------------- text

TEXT_SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab_size=30522),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=2000),
}


def generated_texts(n: int, n_classes: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Random sentences; each topic draws half of its words from its own small vocabulary."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "so", "vi", "pe", "dan", "tor", "mel", "quo", "zir", "bal"]
    word = lambda: "".join(rng.choice(syllables) for _ in range(rng.randint(1, 3)))  # noqa: E731
    common = [word() for _ in range(400)]
    topical = [[word() for _ in range(60)] for _ in range(n_classes)]
    texts, labels = [], []
    for i in range(n):
        c = i % n_classes
        words = [rng.choice(topical[c] if rng.random() < 0.5 else common) for _ in range(rng.randint(8, 160))]
        texts.append(" ".join(words).capitalize() + ".")
        labels.append(f"topic_{c:02d}")
    return texts, labels


def load_texts(args) -> tuple[list[str], list[str], str]:
    """(texts, labels, source): a seeded sample of ``--texts`` (default fortunes.jsonl when present), else generated text."""
    if args.texts and args.texts != "generated" and not Path(args.texts).is_file():
        sys.exit(f"--texts {args.texts}: no such file")
    path = Path(args.texts) if args.texts else Path(__file__).resolve().parents[1].parent / "shared/datasets/fortunes/fortunes.jsonl"
    if args.texts != "generated" and path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        rng = random.Random(0)
        picked = rng.sample(rows, min(args.text_n, len(rows)))
        return [r["text"] for r in picked], [str(r["label"]) for r in picked], str(path)
    texts, labels = generated_texts(args.text_n, args.classes)
    return texts, labels, "generated"


def write_manifest(texts: list[str], labels: list[str], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for t, y in zip(texts, labels):
            fh.write(json.dumps({"text": t, "label": y}) + "\n")
    return path


def build_bert_folder(texts: list[str], size: str, folder: Path) -> Path:
    """A random-init BERT saved as a local Hugging Face folder, with a WordPiece tokenizer trained on ``texts``."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    spec = dict(TEXT_SIZES[size])
    folder.mkdir(parents=True, exist_ok=True)
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(texts, vocab_size=spec["vocab_size"], min_frequency=1, show_progress=False)
    vocab = Path(wordpiece.save_model(str(folder))[0])
    BertTokenizerFast(str(vocab), do_lower_case=True, model_max_length=512).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(max_position_embeddings=512, **spec)).save_pretrained(folder)
    return folder


class TokenizedTexts(torch.utils.data.Dataset):
    """Token ids per text (truncated, unpadded) and the label: what DataCollatorWithPadding expects."""

    def __init__(self, encodings, labels: list[int]):
        self.encodings, self.labels = encodings, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.encodings.items()}
        item["labels"] = self.labels[i]
        return item


@frees_memory
def measure_trainer(folder: Path, texts: list[str], labels: list[str], args, device: torch.device, work: Path) -> dict[str, Any]:
    """Plain ``transformers.Trainer`` with default options, timed from loading the model to the end of training."""
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    reset_backend_flags()
    names = sorted(set(labels))
    ids = [names.index(y) for y in labels]
    train_seconds: dict[str, float] = {}

    def run():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(names))
        dataset = TokenizedTexts(tokenizer(texts, truncation=True, max_length=args.text_max_length), ids)
        targs = TrainingArguments(
            output_dir=str(work / "trainer"), per_device_train_batch_size=args.text_batch_size, num_train_epochs=args.text_epochs,
            bf16=device.type == "cuda", use_cpu=device.type == "cpu", report_to=[], save_strategy="no", logging_strategy="no",
            dataloader_num_workers=0, disable_tqdm=True, torch_compile=args.compile, seed=0,
        )
        trainer = Trainer(model=model, args=targs, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer))
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its final metrics dict
            trainer.train()
        sync(device)
        train_seconds["train"] = time.perf_counter() - t0
        return trainer

    trainer, seconds = timed(run, device)
    n = len(texts) * args.text_epochs
    return {"seq_s": n / seconds, "seconds": seconds, "train_call_seconds": train_seconds["train"],
            "train_call_seq_s": n / train_seconds["train"], "n_train": len(texts)}


@frees_memory
@torch.no_grad()
def measure_text_forward(folder: Path, texts: list[str], args, device: torch.device) -> dict[str, Any]:
    """Pure forward of the same backbone over the same length-sorted batches, tokenised and on the device beforehand."""
    from transferkit.backbones import create_backbone

    backbone = create_backbone(str(folder), max_length=args.text_max_length).to(device).eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    bs = args.text_feature_batch_size
    batches = [{k: v.to(device) for k, v in backbone.tokenize([texts[i] for i in order[s:s + bs]]).items()}
               for s in range(0, len(texts), bs)]

    def run():
        for batch in batches:
            with autocast(device):
                backbone(batch)

    run()  # warm-up pass
    _, seconds = timed(run, device)
    return {"seq_s": len(texts) / seconds, "seconds": seconds, "n": len(texts), "batch_size": bs}


def benchmark_text(args, device: torch.device, work: Path) -> dict[str, Any]:
    import transferkit as tk

    texts, labels, source = load_texts(args)
    log(f"text: {len(texts)} texts from {source}; building a random-init BERT-{args.text_model_size} folder")
    folder = build_bert_folder(texts, args.text_model_size, work / f"bert-{args.text_model_size}")
    manifest = write_manifest(texts, labels, work / "texts.jsonl")
    out: dict[str, Any] = {"model": f"bert-{args.text_model_size} (random init)", "source": source, "n_texts": len(texts),
                           "classes": len(set(labels)), "max_length": args.text_max_length, "batch_size": args.text_batch_size,
                           "epochs": args.text_epochs, "config": TEXT_SIZES[args.text_model_size]}
    with transferkit_cache(work / "tk-cache-text"):
        log(f"text: transferkit fit, {args.text_epochs} epochs")
        out["tk_fit"] = measure_tk_fit(manifest, args, device, epochs=args.text_epochs, unit="seq", backbone=str(folder),
                                       max_length=args.text_max_length, batch_size=args.text_batch_size)
        log(f"  {out['tk_fit']['seq_s']:.1f} seq/s end to end")
        log("text: transformers Trainer")
        out["trainer"] = measure_trainer(folder, texts, labels, args, device, work)
        log(f"  {out['trainer']['seq_s']:.1f} seq/s end to end")
        log("text: pure forward over the same batches")
        reset_backend_flags()
        out["forward"] = measure_text_forward(folder, texts, args, device)
        log(f"  {out['forward']['seq_s']:.1f} seq/s")
        log("text: transferkit extract_features")
        out["tk_features"] = measure_tk_features(str(folder), tk.load_data(manifest), args, device, args.text_feature_batch_size,
                                                 max_length=args.text_max_length)
        out["tk_features"]["seq_s"] = out["tk_features"].pop("img_s")
        log(f"  {out['tk_features']['seq_s']:.1f} seq/s")
    out["ratios"] = {
        "tk/trainer": out["tk_fit"]["seq_s"] / out["trainer"]["seq_s"],
        "features/forward": out["tk_features"]["seq_s"] / out["forward"]["seq_s"],
    }
    if out["tk_fit"].get("steady_seq_s"):
        out["ratios"]["tk_steady/trainer_train_call"] = out["tk_fit"]["steady_seq_s"] / out["trainer"]["train_call_seq_s"]
    return out


# --------------------------------------------------------------------------- report


def fmt_rate(v: float | None) -> str:
    return f"{v:10.1f}" if v is not None and math.isfinite(v) else f"{'-':>10}"


def verdict(name: str, value: float) -> str:
    return f"target >= {TARGETS[name]:.2f}: {'PASS' if value >= TARGETS[name] else 'FAIL'}"


def image_rows(r: dict[str, Any], args) -> list[tuple[str, float | None, float | None]]:
    w, c = r["tk_fit_warm"], r["tk_fit_cold"]
    return [
        ("(a) ceiling: train steps on a synthetic batch on the device", r["ceiling_train"]["img_s"], r["ceiling_train"]["seconds"]),
        (f"(b) transferkit fit ({r['tk_strategy']}), COLD cache, end to end", c["img_s"], c["seconds"]),
        (f"(b) transferkit fit ({r['tk_strategy']}), WARM cache, end to end", w["img_s"], w["seconds"]),
        ("(b) transferkit fit, WARM, per-epoch steady state", w.get("steady_img_s"), None),
        (f"    setup (cold / warm): {c['setup_seconds'] or 0:.1f} s / {w['setup_seconds'] or 0:.1f} s", None, None),
        (f"(c) conventional PIL DataLoader loop ({args.workers} workers)", r["conventional"]["img_s"], r["conventional"]["seconds"]),
        (f"forward ceiling: no_grad, synthetic, batch {args.feature_batch_size}", r["ceiling_forward"]["img_s"], r["ceiling_forward"]["seconds"]),
        ("transferkit extract_features, COLD cache", r["tk_features_cold"]["img_s"], r["tk_features_cold"]["seconds"]),
        ("transferkit extract_features, WARM cache", r["tk_features_warm"]["img_s"], r["tk_features_warm"]["seconds"]),
    ]


def print_report(report: dict[str, Any], args) -> None:
    env = report["environment"]
    line = "-" * 100
    print(line)
    print(f"transferkit throughput | {env['device']} | torch {env['torch']} | timm {env['timm']} | transformers "
          f"{env['transformers']} | {env['cpu_count']} CPUs | {env['precision']}")
    for r in report.get("images", []):
        print(line)
        print(f"{r['model']}{' (random init)' if r['random_init'] else ''}: {r['n_images']} images, {r['classes']} classes, "
              f"{args.image_size} px, batch {args.batch_size}, {args.epochs} epochs")
        print(f"  {'measurement':<68}{'img/s':>10}{'seconds':>10}")
        for label, rate, seconds in image_rows(r, args):
            print(f"  {label:<68}{fmt_rate(rate) if rate is not None or seconds is not None else '':>10}"
                  f"{f'{seconds:10.2f}' if seconds is not None else '':>10}")
        q = r["ratios"]
        steady_a = f", steady {q['b/a_steady']:.2f}" if "b/a_steady" in q else ""
        steady_c = f", steady {q['b/c_steady']:.2f}" if "b/c_steady" in q else ""
        print(f"  b/a  = {q['b/a']:.2f} (warm; cold {q['b/a_cold']:.2f}{steady_a})   {verdict('b/a', q['b/a'])}")
        print(f"  b/c  = {q['b/c']:.2f} (warm; cold {q['b/c_cold']:.2f}{steady_c})   {verdict('b/c', q['b/c'])}")
        print(f"  features/forward = {q['features/forward']:.2f} (warm; cold {q['features/forward_cold']:.2f})   "
              f"{verdict('features/forward', q['features/forward'])}")
    t = report.get("text")
    if t:
        print(line)
        print(f"{t['model']}: {t['n_texts']} texts ({Path(t['source']).name}), {t['classes']} classes, max length {t['max_length']}, "
              f"batch {t['batch_size']}, {t['epochs']} epochs")
        print(f"  {'measurement':<68}{'seq/s':>10}{'seconds':>10}")
        rows = [
            ("transferkit fit, end to end", t["tk_fit"]["seq_s"], t["tk_fit"]["seconds"]),
            ("transferkit fit, per-epoch steady state", t["tk_fit"].get("steady_seq_s"), None),
            ("transformers Trainer, end to end (load + tokenise + train)", t["trainer"]["seq_s"], t["trainer"]["seconds"]),
            ("transformers Trainer, trainer.train() only", t["trainer"]["train_call_seq_s"], t["trainer"]["train_call_seconds"]),
            (f"forward ceiling: no_grad, same length-sorted batches of {t['forward']['batch_size']}", t["forward"]["seq_s"],
             t["forward"]["seconds"]),
            ("transferkit extract_features", t["tk_features"]["seq_s"], t["tk_features"]["seconds"]),
        ]
        for label, rate, seconds in rows:
            print(f"  {label:<68}{fmt_rate(rate)}{f'{seconds:10.2f}' if seconds is not None else '':>10}")
        q = t["ratios"]
        extra = f" (steady epoch vs trainer.train(): {q['tk_steady/trainer_train_call']:.2f})" if "tk_steady/trainer_train_call" in q else ""
        print(f"  transferkit/Trainer = {q['tk/trainer']:.2f}{extra}")
        print(f"  features/forward = {q['features/forward']:.2f}")
    print(line)
    print(f"total benchmark time {report['total_seconds']:.1f} s")


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=Path, help="folder with one subfolder of JPEGs per class (default: generate --n-images)")
    p.add_argument("--n-images", type=int, default=4096)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--models", default="efficientnet_lite0,timm/resnet50", help="comma-separated transferkit backbone names")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3, help="epochs of transferkit fit")
    p.add_argument("--conv-epochs", type=int, default=1, help="timed epochs of the conventional loop (after one warm-up epoch)")
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--ceiling-steps", type=int, default=30, help="timed steps of the synthetic ceilings")
    p.add_argument("--feature-batch-size", type=int, default=None, help="default 512 on CUDA, --batch-size elsewhere")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--compile", action="store_true", help="torch.compile the trained models (all three pipelines)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 0, help="DataLoader workers of the conventional loop")
    p.add_argument("--text-model-size", choices=tuple(TEXT_SIZES), default="base")
    p.add_argument("--texts", help="JSONL with text/label; 'generated' for random sentences "
                   "(default ../shared/datasets/fortunes/fortunes.jsonl when present, else generated)")
    p.add_argument("--text-n", type=int, default=4096)
    p.add_argument("--text-max-length", type=int, default=128)
    p.add_argument("--text-batch-size", type=int, default=64)
    p.add_argument("--text-epochs", type=int, default=2)
    p.add_argument("--text-feature-batch-size", type=int, default=256)
    p.add_argument("--skip-text", action="store_true")
    p.add_argument("--skip-images", action="store_true")
    p.add_argument("--work-dir", type=Path, help="where generated data and caches go (default: a temp dir, removed at the end)")
    p.add_argument("--json-out", type=Path)
    return p.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    device = pick_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU available")
    if args.feature_batch_size is None:
        args.feature_batch_size = 512 if device.type == "cuda" else args.batch_size
    save_backend_flags()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="tk-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(device), "args": {k: str(v) if isinstance(v, Path) else v
                                                                            for k, v in vars(args).items()}}
    log(f"device {report['environment']['device']}, work dir {work}")
    try:
        with transferkit_cache(work / "tk-cache"):  # each measurement below sets its own, fresh one
            run_benchmarks(args, device, work, report)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    report["total_seconds"] = time.perf_counter() - _T0
    print_report(report, args)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2, default=str))
        log(f"wrote {args.json_out}")
    return report


def run_benchmarks(args, device: torch.device, work: Path, report: dict[str, Any]) -> None:
    if not args.skip_images:
        folder = args.images
        if folder is None:
            folder = work / "images"
            log(f"generating {args.n_images} JPEGs (500x375, quality 90) in {args.classes} classes")
            generate_images(folder, args.n_images, args.classes, processes=args.workers)
        report["image_folder"] = str(folder)
        report["images"] = [benchmark_image_model(m.strip(), folder, work / "tk-cache", args, device)
                            for m in args.models.split(",") if m.strip()]
    if not args.skip_text:
        report["text"] = benchmark_text(args, device, work)


if __name__ == "__main__":
    main()
