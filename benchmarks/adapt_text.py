"""Domain adaptation on text: drug-review sentiment, other conditions -> Birth Control.

../shared/datasets/drug-reviews: the labelled source is every training review whose condition is
not "Birth Control" (15% held out as source validation); the unlabelled target is the training
reviews about Birth Control; accuracy is reported on the test reviews about Birth Control (the
target test set is small: say so when quoting numbers). Labels: rating positive/neutral/negative.

    python benchmarks/adapt_text.py --epochs 5 --seeds 3 --data-dir ../shared/datasets/drug-reviews
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

import transferkit as tk
from transferkit.adapt import AdaptConfig, adapt, hide_labels
from transferkit.data import TaskData

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "drug-reviews"
TARGET = "Birth Control"


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def task(rs: list[dict[str, str]], names: list[str], source: str) -> TaskData:
    texts = [r["review"].strip().strip('"').replace("&#039;", "'") for r in rs]
    return TaskData(texts, np.array([names.index(r["rating"]) for r in rs]), names, "text", source=source)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="source-only,dann,coral,self-training,dann+self-training")
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    train_rows, test_rows = rows(args.data_dir / "drugsComTrain.tsv"), rows(args.data_dir / "drugsComTest.tsv")
    names = sorted({r["rating"] for r in train_rows})
    source = task([r for r in train_rows if r["condition"] != TARGET], names, "other conditions (train)")
    tgt = task([r for r in train_rows if r["condition"] == TARGET], names, "birth control (train)")
    target = hide_labels(TaskData(tgt.inputs, tgt.targets, names, "text", source="birth control (train, unlabelled)"))
    target_test = task([r for r in test_rows if r["condition"] == TARGET], names, "birth control (test)")
    cfg = tk.FitConfig(backbone=args.backbone, epochs=args.epochs, max_length=args.max_length, lr=args.lr, batch_size=16,
                       device=args.device, test_fraction=0.0, patience=args.epochs)
    print(f"source {len(source)} reviews, target {len(target)} (unlabelled), target test {len(target_test)}", flush=True)
    out = []
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        res = adapt(source, target, target_test=target_test, config=cfg, adapt_config=AdaptConfig(method=method), seeds=args.seeds,
                    baseline=False, diagnostics=False, progress=False, target_labels_for_report=tgt.targets)
        r = res.report["rows"][0]
        out.append(r)
        print(f"{method:<22} target {r['target_mean']:.4f} +- {r['target_std']:.4f} macro-F1 {r['target_f1_mean']:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if args.json_out:
            args.json_out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
