"""Zero-shot emoji subcategories: map image features to MiniLM embeddings of subcategory names.

../shared/datasets/emoji-styles, Google style, labelled by subcategory (98 classes, names such as
"animal-mammal" read as "animal mammal"). ``--unseen`` subcategories (drawn with --split-seed
among those with at least 5 emoji) are held out entirely. On the seen subcategories (80% of their
emoji; 20% kept for testing) a linear map from frozen EfficientNet-Lite0 features to the names'
MiniLM embeddings is learned (transferkit.zeroshot.zeroshot_model with --seen). Reported:

- zero-shot top-1 on the unseen emoji among the unseen subcategories (chance 1/--unseen);
- generalised: all 98 subcategories as candidates, per-class accuracy on seen-test and unseen
  emoji and their harmonic mean, without calibration and with the automatic calibration
  (chosen on a split of the seen classes only).

    python benchmarks/zeroshot_emoji.py --image-size 224
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch

from transferkit.backbones import create_backbone
from transferkit.data import TaskData
from transferkit.features import extract_features
from transferkit.zeroshot import gzsl_accuracies, zeroshot_model

STYLES = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "emoji-styles"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=STYLES)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--unseen", type=int, default=20)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--template", action="append", default=None, help="prompt templates (default: '{}' and 'an emoji of {}')")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    templates = args.template or ["{}", "an emoji of {}"]
    with open(args.data_dir / "emoji.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = sorted({r["subcategory"].replace("-", " ") for r in rows})
    y = np.array([names.index(r["subcategory"].replace("-", " ")) for r in rows])
    paths = [str(args.data_dir / "images" / "google" / r["image"]) for r in rows]
    rng = np.random.default_rng(args.split_seed)
    counts = np.bincount(y, minlength=len(names))
    unseen = np.sort(rng.choice(np.flatnonzero(counts >= 5), args.unseen, replace=False))
    is_unseen = np.isin(y, unseen)
    seen_idx = np.flatnonzero(~is_unseen)
    test_mask = np.zeros(len(y), bool)
    test_mask[rng.choice(seen_idx, int(0.2 * len(seen_idx)), replace=False)] = True
    train = ~is_unseen & ~test_mask
    seen_names = [n for i, n in enumerate(names) if i not in set(unseen)]
    seen_data = TaskData([p for p, m in zip(paths, train) if m], np.array([seen_names.index(names[c]) for c in y[train]]), seen_names, "image")
    unseen_names = [names[i] for i in unseen]
    print(f"{len(seen_names)} seen subcategories ({int(train.sum())} train / {int(test_mask.sum())} test emoji), "
          f"{len(unseen_names)} unseen ({int(is_unseen.sum())} emoji): {', '.join(unseen_names)}", flush=True)

    bb = create_backbone(args.backbone, image_size=args.image_size)
    everything = TaskData(paths, y, names, "image")
    feats = extract_features(bb, everything, device=args.device, progress=True)
    results = {"unseen_classes": unseen_names, "templates": templates, "image_size": args.image_size}

    zsl = zeroshot_model(unseen_names, backbone=bb, seen=seen_data, templates=templates, device=args.device)
    with torch.no_grad():
        pred = zsl.head(feats[is_unseen]).argmax(1).numpy()
    truth = np.array([unseen_names.index(names[c]) for c in y[is_unseen]])
    results["zsl_top1"] = float((pred == truth).mean())
    results["zsl_chance"] = 1 / len(unseen_names)
    print(f"zero-shot top-1 on {len(unseen_names)} unseen subcategories: {results['zsl_top1']:.3f} (chance {results['zsl_chance']:.3f})")

    eval_mask = test_mask | is_unseen
    seen_mask = torch.tensor([i not in set(unseen) for i in range(len(names))])
    for calibration in (0.0, "auto"):
        g = zeroshot_model(names, backbone=bb, seen=seen_data, templates=templates, calibration=calibration, device=args.device)
        gamma = g.info["zero_shot"]["gamma"]
        with torch.no_grad():
            raw = g.head(feats[eval_mask]) - g.head.bias  # cosine x scale, without the calibration
        r = gzsl_accuracies(raw / float(g.head.scale), torch.as_tensor(y[eval_mask]), seen_mask, gamma)
        results[f"gzsl_{'auto' if calibration == 'auto' else 'none'}"] = r
        print(f"generalised ({len(names)} candidates), calibration {calibration} (gamma {gamma:.2f}): "
              f"seen {r['seen']:.3f}, unseen {r['unseen']:.3f}, harmonic {r['harmonic']:.3f}", flush=True)
    print(json.dumps(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
