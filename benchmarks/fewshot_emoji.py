"""Few-shot on emoji subcategories: frozen prototypes, and meta-training on disjoint base classes.

../shared/datasets/emoji-styles: every emoji labelled by its subcategory (98 classes); 5-way
episodes (600, seed 0, 10 queries a class), prototypes of centred, L2-normalised features, cosine.
Support and queries in Google style; then Google support and Twitter queries (the same identities'
other style; a query is never a support item).

Without --meta: frozen EfficientNet-Lite0 on all subcategories (the dataset README's reference).
With --meta: ``--novel`` subcategories (drawn with --split-seed among those with >= 15 emoji) are
held out entirely; the backbone is trained on the Google images of the other subcategories (the
base classes) and evaluated on the novel ones, next to the frozen backbone on the same novel
classes. Methods: ``frozen``, ``meta`` (episodic prototypical training, transferkit.fewshot.meta_train)
``supervised`` (plain fine-tuning with a softmax head on the base classes, then prototypes) and
``supervised+meta`` (the supervised backbone, then meta-trained).

    python benchmarks/fewshot_emoji.py --image-size 224
    python benchmarks/fewshot_emoji.py --meta --methods frozen,meta,supervised,supervised+meta --json out.json
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from transferkit.backbones import create_backbone
from transferkit.data import TaskData
from transferkit.features import extract_features
from transferkit.fewshot import evaluate_episodes

STYLES = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "emoji-styles"


def episodes_table(feats: dict, y: np.ndarray, args, method: str) -> list[dict]:
    out = []
    for k in (1, 5):
        for name, q in (("google/google", None), ("google/twitter", feats["twitter"])):
            r = evaluate_episodes(feats["google"], y, n_way=5, k_shot=k, n_query=args.queries, episodes=args.episodes, seed=0, query_features=q)
            out.append({"method": method, "setting": name, **r.to_dict()})
            print(f"{method:>10} 5-way {k}-shot {name}: {r.mean:.3f} +- {r.ci95:.3f}", flush=True)
    return out


def supervised(base: TaskData, args):
    """Fine-tune with a softmax head on the base classes (85/15 random split for model selection)."""
    from transferkit import fit

    perm = np.random.default_rng(args.seed).permutation(len(base))
    cut = int(0.85 * len(base))
    res = fit(base, splits=(base.subset(perm[:cut]), base.subset(perm[cut:]), None), backbone=args.backbone,
              strategy="finetune", image_size=args.image_size, epochs=args.epochs, lr=1e-3, seed=args.seed,
              device=args.device, progress=False)
    return res.model.backbone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=STYLES)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--episodes", type=int, default=600, help="evaluation episodes")
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--meta", action="store_true", help="base/novel split; train on base, evaluate on novel")
    ap.add_argument("--methods", default="frozen,meta,supervised")
    ap.add_argument("--novel", type=int, default=20, help="novel subcategories held out")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--episodes-train", type=int, default=2000)
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--train-queries", type=int, default=5)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--train-last", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=15, help="supervised: epochs on the base classes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    with open(args.data_dir / "emoji.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = sorted({r["subcategory"] for r in rows})
    y = np.array([names.index(r["subcategory"]) for r in rows])
    paths = {s: [str(args.data_dir / "images" / s / r["image"]) for r in rows] for s in ("google", "twitter")}
    results: list[dict] = []
    if not args.meta:
        sets = {s: TaskData(p, y, names, "image") for s, p in paths.items()}
        bb = create_backbone(args.backbone, image_size=args.image_size)
        feats = {s: extract_features(bb, d, device=args.device, progress=True) for s, d in sets.items()}
        results = episodes_table(feats, y, args, "frozen")
    else:
        counts = np.bincount(y, minlength=len(names))
        eligible = np.flatnonzero(counts >= 15)
        novel = np.sort(np.random.default_rng(args.split_seed).choice(eligible, args.novel, replace=False))
        is_novel = np.isin(y, novel)
        base_names = [n for i, n in enumerate(names) if i not in set(novel)]
        base = TaskData([p for p, m in zip(paths["google"], is_novel) if not m],
                        np.array([base_names.index(names[c]) for c in y[~is_novel]]), base_names, "image")
        novel_names = [names[i] for i in novel]
        y_novel = np.array([novel_names.index(names[c]) for c in y[is_novel]])
        novel_sets = {s: TaskData([p for p, m in zip(paths[s], is_novel) if m], y_novel, novel_names, "image") for s in paths}
        print(f"base: {len(base_names)} subcategories, {len(base)} images; novel: {len(novel_names)} subcategories, "
              f"{int(is_novel.sum())} emoji ({', '.join(novel_names)})", flush=True)
        for method in args.methods.split(","):
            t0 = time.time()
            if method == "frozen":
                bb = create_backbone(args.backbone, image_size=args.image_size)
            elif method in ("meta", "supervised+meta"):
                from transferkit.fewshot import meta_train

                start = supervised(base, args) if method == "supervised+meta" else args.backbone
                model = meta_train(base, backbone=start, image_size=args.image_size, ways=args.ways, shots=args.shots,
                                   queries=args.train_queries, episodes=args.episodes_train, lr=args.lr, train_last=args.train_last,
                                   seed=args.seed, device=args.device)
                bb = model.backbone
                print(json.dumps(model.info["meta_training"]["history"][-1]), flush=True)
            elif method == "supervised":
                bb = supervised(base, args)
            else:
                raise SystemExit(f"unknown method {method!r}")
            train_s = time.time() - t0
            feats = {s: extract_features(bb, d, device=args.device) for s, d in novel_sets.items()}
            for r in episodes_table(feats, y_novel, args, method):
                results.append({**r, "train_seconds": round(train_s, 1), "config": vars(args) | {"data_dir": str(args.data_dir), "json": None}})
    print(json.dumps([{k: v for k, v in r.items() if k != "config"} for r in results]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
