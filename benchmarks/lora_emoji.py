"""LoRA vs full fine-tuning on the embedded emoji task: trainable parameters, accuracy, saved size.

Train on the embedded Google emoji train set (15% held out for validation / early stopping),
accuracy on the embedded test set (763). On CUDA the table adds the peak GPU memory of training.

    python benchmarks/lora_emoji.py --image-size 96 --epochs 3                  # 2-core CPU, ~3 min
    python benchmarks/lora_emoji.py --image-size 224 --epochs 15 --seeds 3      # GPU

Variants: ``finetune``, ``lora`` (defaults: r 8, alpha 16, pointwise convolutions, adapters at
lr * backbone-lr-ratio as any backbone group), ``lora-fast`` (adapters at the head's lr:
--backbone-lr-ratio 1 --layer-decay 1), ``lora-r32``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import transferkit as tk
import transferkit.strategies.lora  # noqa: F401  (registers the strategy until strategies/__init__ does)
from transferkit.quickstart import embedded_emoji

VARIANTS = {
    "finetune": {"strategy": "finetune"},
    "lora": {"strategy": "lora"},
    "lora-fast": {"strategy": "lora", "backbone_lr_ratio": 1.0, "layer_decay": 1.0},
    "lora-r32": {"strategy": "lora", "lora_r": 32, "lora_alpha": 64.0},
}


def trainable(model) -> tuple[int, int]:
    if "trainable_parameters" in model.info:
        return model.info["trainable_parameters"], model.info["total_parameters"]
    n = sum(p.numel() for p in model.parameters())
    return n, n  # fine-tuning trains every parameter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--variants", default="finetune,lora,lora-fast")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    train_all, test = embedded_emoji()
    train, val, _ = tk.split_data(train_all, val=0.15, test=0.0, seed=0)
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    rows = []
    for name in args.variants.split(","):
        accs, f1s, secs, peaks = [], [], [], []
        for seed in range(args.seeds):
            cfg = tk.FitConfig(backbone=args.backbone, image_size=args.image_size, epochs=args.epochs, seed=seed,
                               device=args.device, **VARIANTS[name])
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            res = tk.fit(train, val_data=val, test_data=test, config=cfg, progress=False)
            secs.append(time.perf_counter() - t0)
            if cuda:
                peaks.append(torch.cuda.max_memory_allocated() / 2**20)
            accs.append(res.metrics["test"]["accuracy"])
            f1s.append(res.metrics["test"]["macro_f1"])
            n_train, n_total = trainable(res.model)
            with tempfile.TemporaryDirectory() as tmp:
                saved = (res.model.save(Path(tmp) / "m") / "model.safetensors").stat().st_size
        row = {"variant": name, "trainable": n_train, "total": n_total, "accuracy": float(np.mean(accs)),
               "accuracy_sd": float(np.std(accs)), "macro_f1": float(np.mean(f1s)), "seconds": float(np.mean(secs)),
               "saved_mb": saved / 2**20, "seeds": args.seeds}
        if cuda:
            row["peak_mib"] = float(np.max(peaks))
        rows.append(row)
        print(json.dumps(row), flush=True)

    head = f"{'variant':<10} {'trainable':>10} {'total':>10} {'test acc':>14} {'macro-F1':>8} {'s/run':>7} {'saved MB':>8}"
    print(f"\n{args.backbone}, {args.image_size}px, {args.epochs} epochs, {args.seeds} seed(s), "
          f"device {'cuda' if cuda else args.device}; test = embedded Google emoji ({len(test)})")
    print(head + (f" {'peak MiB':>9}" if cuda else ""))
    for r in rows:
        acc = f"{r['accuracy']:.3f}" + (f" ± {r['accuracy_sd']:.3f}" if r["seeds"] > 1 else "")
        line = (f"{r['variant']:<10} {r['trainable']:>10,} {r['total']:>10,} {acc:>14} {r['macro_f1']:>8.3f} "
                f"{r['seconds']:>7.1f} {r['saved_mb']:>8.2f}")
        print(line + (f" {r['peak_mib']:>9.0f}" if cuda else ""))
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
