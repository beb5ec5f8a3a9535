"""Does sharing one backbone between emoji category (9) and subcategory (~98) help either task?

Multi-task fine-tuning (one backbone, two heads, learned uncertainty weights) against a single-task
fine-tune per label column with the same budget (epochs, image size, settings), on the embedded
Google emoji with the quickstart's 60/40 identity split (15% of training identities for early
stopping). ``--drop-subcategory F`` removes the subcategory label from a fraction F of training
rows (masked loss), the situation multi-task learning is for.

    python benchmarks/multitask_emoji.py --image-size 224 --epochs 10     # GPU
    python benchmarks/multitask_emoji.py --image-size 64 --epochs 2       # CPU smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import transferkit as tk
from transferkit.quickstart import ASSETS

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "emoji-styles" / "emoji.csv"


def manifest(folder: Path, emoji_csv: Path, drop: float, seed: int) -> tuple[Path, np.ndarray, np.ndarray]:
    """One manifest of all 1,906 emoji (so both splits share the label names), and the row indices
    of the train and test identities."""
    sub = {r["image"]: r["subcategory"] for r in csv.DictReader(open(emoji_csv, encoding="utf-8"))}
    rows = list(csv.DictReader(open(ASSETS / "labels.csv", encoding="utf-8")))
    rng = np.random.default_rng(seed)
    path = folder / "emoji.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "category", "subcategory"])
        for r in rows:
            keep = r["split"] == "test" or rng.random() >= drop
            w.writerow([str(ASSETS / "images" / r["image"]), r["category"], sub[r["image"]] if keep else ""])
    split = np.array([r["split"] for r in rows])
    return path, np.flatnonzero(split == "train"), np.flatnonzero(split == "test")


def single(data: tk.TaskData, j: int) -> tk.TaskData:
    """Task ``j`` of multi-task data as single-task data (rows without its label left out)."""
    keep = ~np.isnan(data.targets[:, j])
    spec = data.tasks[j]
    return tk.TaskData([x for x, k in zip(data.inputs, keep) if k], data.targets[keep, j].astype(np.int64), spec["label_names"],
                       data.modality, source=spec["name"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--drop-subcategory", type=float, default=0.0)
    ap.add_argument("--weighting", default="uncertainty")
    ap.add_argument("--emoji-csv", type=Path, default=SHARED)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    path, tr_idx, te_idx = manifest(Path(tempfile.mkdtemp()), args.emoji_csv, args.drop_subcategory, args.seed)
    tasks = "category,subcategory"
    base = dict(backbone="efficientnet_lite0", image_size=args.image_size, epochs=args.epochs, seed=args.seed, device=args.device,
                patience=args.epochs)
    data = tk.load_data(str(path), tasks=tasks)
    train, test = data.subset(tr_idx), data.subset(te_idx)
    rows = {}
    t0 = time.perf_counter()
    trn, val, _ = tk.split_data(train, val=0.15, test=0.0, seed=0)
    res = tk.fit(None, splits=(trn, val, test), strategy="multitask", mt_weighting=args.weighting, progress=False, **base)
    mt_s = time.perf_counter() - t0
    for name, m in res.metrics["test"]["tasks"].items():
        rows[f"multitask/{name}"] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "seconds": mt_s}
    print(f"multitask: {json.dumps({k: round(v['accuracy'], 4) for k, v in rows.items()})} ({mt_s:.0f} s) "
          f"task weights {res.model.info.get('task_weights')}", flush=True)
    for j, column in enumerate(tasks.split(",")):
        t0 = time.perf_counter()
        s_trn, s_val, _ = tk.split_data(single(train, j), val=0.15, test=0.0, seed=0)
        r = tk.fit(None, splits=(s_trn, s_val, single(test, j)), strategy="finetune", progress=False, **base)
        secs = time.perf_counter() - t0
        rows[f"single/{column}"] = {"accuracy": r.metrics["test"]["accuracy"], "macro_f1": r.metrics["test"]["macro_f1"], "seconds": secs}
        print(f"single {column}: {r.metrics['test']['accuracy']:.4f} ({secs:.0f} s)", flush=True)
    print(f"\nemoji, efficientnet_lite0 @ {args.image_size}px, {args.epochs} epochs, subcategory labels dropped from "
          f"{args.drop_subcategory:.0%} of training rows")
    print(f"{'model/task':<24}{'accuracy':>10}{'macro-F1':>10}{'s':>8}")
    for k, v in rows.items():
        print(f"{k:<24}{v['accuracy']:>10.4f}{v['macro_f1']:>10.4f}{v['seconds']:>8.0f}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
