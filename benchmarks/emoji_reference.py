"""The reference setting of ../shared/datasets/README.md, measured with transferkit.

Emoji category task (9 classes), the 1,906 emoji split 60/40 by identity (default_rng(0)), trained
on Google style (15% of the training identities held out for validation / early stopping), accuracy
on the held-out 40% in Google style and, if ../shared is present, in Twitter style (shifted domain).

    python benchmarks/emoji_reference.py --image-size 224 --epochs 15 --seeds 3        # GPU
    python benchmarks/emoji_reference.py --image-size 96 --epochs 10 --seeds 1         # 2-core CPU

Prints one row per strategy (mean and spread over seeds) and writes the rows as JSON (--json-out).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import transferkit as tk
from transferkit.data import TaskData
from transferkit.quickstart import embedded_emoji

TWITTER = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "emoji-styles" / "images" / "twitter"

VARIANTS = {
    "linear-probe": {"strategy": "linear-probe"},
    "finetune": {"strategy": "finetune"},
    "finetune-lpft": {"strategy": "finetune", "head_init": "probe"},
    "scratch": {"strategy": "scratch"},
}


def twitter_version(test: TaskData) -> TaskData | None:
    if not TWITTER.is_dir():
        return None
    paths = [str(TWITTER / Path(p).name) for p in test.inputs]
    keep = [i for i, p in enumerate(paths) if Path(p).is_file()]
    return TaskData([paths[i] for i in keep], test.targets[keep], test.label_names, "image", source="twitter test")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    train_all, test = embedded_emoji()
    train, val, _ = tk.split_data(train_all, val=0.15, test=0.0, seed=0)
    shifted = twitter_version(test)
    rows = []
    for name in args.variants.split(","):
        scores, shifted_scores, f1s, secs = [], [], [], []
        for seed in range(args.seeds):
            cfg = tk.FitConfig(backbone=args.backbone, image_size=args.image_size, epochs=args.epochs, seed=seed,
                               device=args.device, patience=args.epochs, **VARIANTS[name])
            t0 = time.perf_counter()
            res = tk.fit(None, config=cfg, splits=(train, val, test), progress=False)
            secs.append(time.perf_counter() - t0)
            scores.append(res.metrics["test"]["accuracy"])
            f1s.append(res.metrics["test"]["macro_f1"])
            if shifted is not None:
                shifted_scores.append(res.model.evaluate(shifted, device=args.device)["accuracy"])
            print(f"{name} seed {seed}: google {scores[-1]:.4f}" + (f" twitter {shifted_scores[-1]:.4f}" if shifted_scores else "") + f" ({secs[-1]:.0f} s)", flush=True)
        row = {"variant": name, "google_mean": float(np.mean(scores)), "google_std": float(np.std(scores)), "google": scores,
               "macro_f1": float(np.mean(f1s)), "seconds": float(np.mean(secs))}
        if shifted_scores:
            row.update(twitter_mean=float(np.mean(shifted_scores)), twitter=shifted_scores)
        rows.append(row)
    print(f"\nemoji category, {len(train)} train / {len(val)} val / {len(test)} test, {args.backbone} @ {args.image_size}px, "
          f"{args.epochs} epochs, {args.seeds} seed(s)")
    print(f"{'variant':<16}{'google acc':>18}{'twitter acc':>14}{'macro-F1':>10}{'s/run':>8}")
    for r in rows:
        tw = f"{r['twitter_mean']:.3f}" if "twitter_mean" in r else "-"
        print(f"{r['variant']:<16}{r['google_mean']:>11.3f} ± {r['google_std']:.3f}{tw:>14}{r['macro_f1']:>10.3f}{r['seconds']:>8.0f}")
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
