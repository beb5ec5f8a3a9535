"""Domain adaptation benchmark: emoji category task, Google style -> Twitter style.

The setting of ../shared/datasets/README.md: the 1,906 emoji split 60/40 by identity (the embedded
split, numpy default_rng(0)); the model trains on the Google images of the 1,143 training
identities (15% of them held out as source validation), the unlabelled target is the Twitter
images of the same 1,143 identities, and accuracy is reported on the Twitter images of the 763
held-out identities. Target labels are never given to ``adapt`` (the target is a TaskData whose
labels raise when read); the Twitter test labels are read once per model, for the table.

    python benchmarks/adapt_emoji.py --methods source-only,adabn,dann,coral,self-training,adabn+dann+self-training \
        --image-size 224 --epochs 15 --seeds 3                                  # GPU
    python benchmarks/adapt_emoji.py --image-size 96 --epochs 8 --seeds 1       # 2-core CPU
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import transferkit as tk
from transferkit.adapt import AdaptConfig, adapt, hide_labels
from transferkit.data import TaskData
from transferkit.quickstart import embedded_emoji

TWITTER = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "emoji-styles" / "images" / "twitter"


def twitter(data: TaskData, folder: Path) -> TaskData:
    paths = [str(folder / Path(p).name) for p in data.inputs]
    return TaskData(paths, data.targets, data.label_names, "image", source="twitter")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="source-only,adabn,dann,coral,self-training,adabn+dann+self-training")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--select", default="last")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", action="append", default=[], help="extra FitConfig/AdaptConfig field=value")
    ap.add_argument("--no-diagnostics", action="store_true", help="skip the proxy A-distance")
    ap.add_argument("--twitter-dir", type=Path, default=TWITTER, help="the Twitter-style images (default: ../shared/...)")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    if not args.twitter_dir.is_dir():
        raise SystemExit(f"{args.twitter_dir} not found: this benchmark needs ../shared/datasets/emoji-styles")

    train_all, test = embedded_emoji()
    source = TaskData(train_all.inputs, train_all.targets, train_all.label_names, "image", source="google train ids")
    tw_train, tw_test = twitter(train_all, args.twitter_dir), twitter(test, args.twitter_dir)
    target = hide_labels(TaskData(tw_train.inputs, tw_train.targets, tw_train.label_names, "image", source="twitter train ids (unlabelled)"))
    extra = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        extra[k] = json.loads(v) if v[:1] in "0123456789-[{tf" and v not in ("finetune",) else v
    cfg = tk.FitConfig(image_size=args.image_size, epochs=args.epochs, device=args.device, test_fraction=0.0, patience=args.epochs,
                       **{k: v for k, v in extra.items() if k in tk.FitConfig.__dataclass_fields__})
    a_extra = {k: v for k, v in extra.items() if k in AdaptConfig.__dataclass_fields__}
    rows = []
    for method in args.methods.split(","):
        row: dict = {"method": method, "target": [], "target_f1": [], "pseudo_accuracy": [], "seconds": [], "best_epoch": []}
        rows.append(row)
        for seed in range(args.seeds):  # one adapt() call per seed: a run cut short keeps the seeds it finished
            res = adapt(source, target, target_test=tw_test, config=cfg.replace(seed=seed),
                        adapt_config=AdaptConfig(method=method, select=args.select, **a_extra), seeds=1, baseline=False,
                        diagnostics=seed == 0 and not args.no_diagnostics, progress=False, target_labels_for_report=tw_train.targets)
            r = res.report["rows"][0]
            for k in ("target", "target_f1", "pseudo_accuracy", "seconds"):
                row[k] += r.get(k, []) if k != "seconds" else [r["seconds"]]
            row["best_epoch"].append(res.model.info["history"][-1].get("best_epoch"))
            if "proxy_a_distance" in res.report:
                row["proxy_a_distance"] = res.report["proxy_a_distance"]
            pa = f" pseudo-label acc {row['pseudo_accuracy'][-1]:.3f}" if row["pseudo_accuracy"] else ""
            print(f"{method} seed {seed}: twitter {row['target'][-1]:.4f} macro-F1 {row['target_f1'][-1]:.3f}{pa} "
                  f"best epoch {row['best_epoch'][-1]} ({row['seconds'][-1]:.0f} s)", flush=True)
            for k in ("target", "target_f1", "pseudo_accuracy"):
                if row[k]:
                    row[f"{k}_mean"], row[f"{k}_std"] = float(np.mean(row[k])), float(np.std(row[k], ddof=1)) if len(row[k]) > 1 else 0.0
            if args.json_out:  # written after every seed: a run cut short keeps what it measured
                args.json_out.write_text(json.dumps(rows, indent=2))
        if "proxy_a_distance" in row:
            print(f"  proxy A-distance: {row['proxy_a_distance']}", flush=True)
    print(f"\nemoji google -> twitter, {args.image_size}px, {args.epochs} epochs, {args.seeds} seed(s), selection {args.select}")
    print(f"{'method':<28}{'twitter acc':>20}{'macro-F1':>10}{'s/run':>8}")
    for r in rows:
        print(f"{r['method']:<28}{r['target_mean']:>12.4f} +- {r['target_std']:.3f}{r['target_f1_mean']:>10.3f}{np.mean(r['seconds']):>8.0f}")


if __name__ == "__main__":
    main()
