"""Model stacking vs the best single member (strategy ``stack``), on frozen features.

Tasks
- emoji: the embedded Google emoji, 9 categories (``transferkit.quickstart.embedded_emoji``:
  1,143 train / 763 test); members EfficientNet-Lite0 + Lite1 + Lite2 at ``--image-size`` (96 on CPU).
- fortunes: ``../shared/datasets/fortunes/fortunes.jsonl`` (25 topics), ``split_data(val=0.0,
  test=0.4, seed=0)`` -> 6,525 train / 4,347 test; members MiniLM's output and its inner layer
  ``encoder.layer.3`` (``minilm@encoder.layer.3``).

Protocol: no validation set, nothing tuned on the test part. Every C is chosen by the same
stratified 5-fold cross-validation on the training part (``--stack-folds``): each single member's
probe is the oof stack's own base learner for that member (standardised logistic regression, C from
the linear probe's grid by out-of-fold accuracy, refit on all training rows); ``concat`` is one
logistic regression on the members' standardised, 1/sqrt(dim)-scaled features side by side;
``oof`` is the meta-learner on the members' out-of-fold probabilities. Test accuracy and macro-F1
are computed from the cached member features through the saved heads (the same numbers the model's
own forward gives: the member features are computed through the stacked backbone's input
conversion; ``--check-predict`` re-runs the full model on the test inputs to confirm).
``fit_s``: fitting on cached features (all C candidates and folds); ``features_s``: embedding train
and test with every member (0 when cached: TRANSFERKIT_CACHE=/tmp/tkc reuses them).

    TRANSFERKIT_CACHE=/tmp/tkc python benchmarks/stack.py --tasks emoji,fortunes --json stack.json

Measured on the project's 2-core CPU (shared with other jobs), features cached, whole run 201 s:

| task | method | test acc | macro-F1 | fit s |
|---|---|---|---|---|
| emoji (763 test) | probe efficientnet_lite0 (C 1.0) | 0.733 | 0.663 | |
| | probe efficientnet_lite1 (C 0.03) | 0.769 | 0.702 | |
| | probe efficientnet_lite2 (C 0.01) | 0.734 | 0.666 | |
| | stack concat (C 12.8) | **0.784** | 0.718 | 13.7 |
| | stack oof (meta C 1.0) | 0.776 | 0.706 | 16.5 |
| fortunes (4,347 test) | probe minilm | 0.572 | 0.571 | |
| | probe minilm@encoder.layer.3 | 0.590 | 0.561 | |
| | stack concat | 0.630 | 0.623 | 84.2 |
| | stack oof | **0.633** | 0.618 | 78.4 |

Emoji: +0.014 (concat) and +0.007 (oof) over the best member, within the binomial standard error
of one accuracy (about 0.015 on 763 images). Fortunes: +0.040 / +0.043 over the best member
(standard error about 0.007). Embedding once (first run, uncached, busy machine): emoji 72 s for
3 members, fortunes 263 s for 2 members. ``--check-predict`` on emoji: the full model's logits
equal the cached-feature ones (max difference 0). Fitting is single-threaded BLAS (see the strategy):
with two OpenBLAS threads on the busy machine the same emoji oof fit took 436 s instead of 16.5 s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import transferkit as tk
import transferkit.strategies.stack as stack
from transferkit.config import FitConfig
from transferkit.metrics import task_metrics
from transferkit.quickstart import embedded_emoji

ROOT = Path(__file__).resolve().parents[1]
FORTUNES = ROOT.parent / "shared" / "datasets" / "fortunes" / "fortunes.jsonl"
MEMBERS = {"emoji": "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2", "fortunes": "minilm,minilm@encoder.layer.3"}


def load_task(name: str):
    if name == "emoji":
        return embedded_emoji()
    data = tk.load_data(FORTUNES)
    train, _, test = tk.split_data(data, val=0.0, test=0.4, seed=0)
    return train, test


def scores(y, logits, names) -> dict:
    m = task_metrics("classification", y, logits, names)
    return {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}


def run_task(name: str, args) -> list[dict]:
    train, test = load_task(name)
    cfg = FitConfig(strategy="stack", backbones=args.backbones or MEMBERS[name], image_size=args.image_size if name == "emoji" else None,
                    device=args.device, stack_folds=args.folds, seed=0)
    backbone = stack.stack_backbone(cfg)
    views = [backbone.member_view(i) for i in range(len(backbone.members))]
    t0 = time.perf_counter()
    stats: dict = {}
    f_test = [stack.member_features(v, test, device=args.device, stats=stats) for v in views]
    for v in views:  # the strategy's own calls hit the cache: features_s is the embedding cost
        stack.member_features(v, train, device=args.device, stats=stats)
    features_s = time.perf_counter() - t0
    rows = []
    models = {}
    for mode in ("oof", "concat"):
        t0 = time.perf_counter()
        model = stack.Stack().fit(train, None, cfg.replace(stack=mode), progress=False)
        fit_s = time.perf_counter() - t0
        models[mode] = model
        with torch.no_grad():
            out = model.head(model.backbone.combine(f_test)).numpy()
        rows.append({"task": name, "method": f"stack {mode}", **scores(test.targets, out, test.label_names), "fit_s": round(fit_s, 1),
                     "info": model.info["stack"]})
        if mode == "oof":  # each member's own probe: the oof stack's base learners
            head = model.head
            with torch.no_grad():
                parts = torch.split(model.backbone.combine(f_test), head.dims, dim=-1)
                for i, (lin, part) in enumerate(zip(head.base, parts)):
                    rows.append({"task": name, "method": f"probe {backbone.members[i].name}",
                                 **scores(test.targets, lin(part).numpy(), test.label_names),
                                 "C": model.info["stack"]["member_C"][i], "cv_accuracy": model.info["stack"]["member_oof_accuracy"][i]})
    if args.check_predict:
        for mode, model in models.items():
            t0 = time.perf_counter()
            full = model.predict_outputs(test.inputs, device=args.device)
            with torch.no_grad():
                cached = model.head(model.backbone.combine(f_test)).numpy()
            print(f"[{name}] {mode}: full forward vs cached features: max |logit diff| {np.abs(full - cached).max():.2e}, "
                  f"same argmax {float((full.argmax(1) == cached.argmax(1)).mean()):.4f} ({time.perf_counter() - t0:.0f} s)")
    for r in rows:
        r["n_train"], r["n_test"], r["features_s"] = len(train), len(test), round(features_s, 1)
    print(f"[{name}] features {features_s:.1f} s ({stats})")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="emoji,fortunes")
    p.add_argument("--backbones", default=None, help="override the members (one task)")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--check-predict", action="store_true", help="also run the whole model on the test inputs")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        rows += run_task(name, args)
    print(f"\n{'task':9} {'method':40} {'acc':>6} {'macroF1':>7} {'fit_s':>6}")
    for r in rows:
        print(f"{r['task']:9} {r['method']:40} {r['accuracy']:6.3f} {r['macro_f1']:7.3f} {r.get('fit_s', ''):>6}")
    for task in sorted({r["task"] for r in rows}):
        single = max((r for r in rows if r["task"] == task and r["method"].startswith("probe")), key=lambda r: r["accuracy"])
        for r in rows:
            if r["task"] == task and r["method"].startswith("stack"):
                print(f"{task}: {r['method']} - best single ({single['method']}) = {r['accuracy'] - single['accuracy']:+.3f} accuracy")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
