"""Few-shot prototypes on emoji subcategories, same style and across styles.

../shared/datasets/emoji-styles: every emoji labelled by its subcategory (98 classes); 5-way
episodes (600, seed 0, 10 queries a class), prototypes of centred, L2-normalised frozen
EfficientNet-Lite0 features, cosine. Support and queries in Google style; then Google support and
Twitter queries (the same identities' other style; a query is never a support item).

    python benchmarks/fewshot_emoji.py --image-size 224
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from transferkit.backbones import create_backbone
from transferkit.data import TaskData
from transferkit.features import extract_features
from transferkit.fewshot import evaluate_episodes

STYLES = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "emoji-styles"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=STYLES)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    with open(args.data_dir / "emoji.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = sorted({r["subcategory"] for r in rows})
    y = np.array([names.index(r["subcategory"]) for r in rows])
    sets = {s: TaskData([str(args.data_dir / "images" / s / r["image"]) for r in rows], y, names, "image") for s in ("google", "twitter")}
    bb = create_backbone(args.backbone, image_size=args.image_size)
    feats = {s: extract_features(bb, d, device=args.device, progress=True) for s, d in sets.items()}
    out = []
    for k in (1, 5):
        for name, q in (("google/google", None), ("google/twitter", feats["twitter"])):
            r = evaluate_episodes(feats["google"], y, n_way=5, k_shot=k, n_query=args.queries, episodes=args.episodes, seed=0, query_features=q)
            out.append({"setting": name, **r.to_dict()})
            print(f"5-way {k}-shot {name}: {r.mean:.3f} +- {r.ci95:.3f}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
