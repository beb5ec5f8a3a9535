"""Do the transferability scores pick the candidate that really transfers best?

For each candidate (backbone, layer) on one task, the scores are computed on the training split only
(what ``transferkit rank`` does), then every candidate is trained for real and tested on the
held-out split: fine-tuned (``fit --layer``; the random-init candidate with the ``scratch``
strategy) and linear-probed (logistic regression on its frozen features). Reported per score and for
the mean-rank aggregate: Kendall's tau and weighted tau (top-weighted) against the real accuracy,
the regret of the top-1 pick (accuracy lost versus the best candidate), and the cost of ranking
versus fine-tuning all candidates.

    python benchmarks/transferability.py --task emoji --image-size 224      # GPU: ~5 min
    python benchmarks/transferability.py --task fortunes                    # GPU: ~5 min
    python benchmarks/transferability.py --task emoji --image-size 64 --epochs 2 --ground-truth linear   # CPU smoke run

Tasks: ``emoji`` = the 9 categories of the embedded Google emoji, 1,143 train / 763 test (the 60/40
identity split of the quickstart); ``fortunes`` = 25 topics, ``split_data(test=0.4, seed=0)``.
Candidates are ``backbone[@layer][~random]``; ``~random`` = the same architecture randomly
initialised (a negative control, trained with the scratch strategy).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import transferkit as tk
from transferkit.backbones import create_backbone
from transferkit.features import extract_layer_features
from transferkit.transferability.rank import aggregate, score_backbone

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
CANDIDATES = {
    "emoji": ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "efficientnet_lite0@blocks.5",
              "efficientnet_lite0@blocks.4", "efficientnet_lite0@blocks.3", "efficientnet_lite2@blocks.5",
              "efficientnet_lite0~random"],
    "fortunes": ["minilm", "minilm@encoder.layer.4", "minilm@encoder.layer.3", "minilm@encoder.layer.2",
                 "minilm@encoder.layer.1", "minilm@encoder.layer.0", "minilm@embeddings", "minilm~random"],
}


def load_task(task: str, fortunes: Path):
    if task == "emoji":
        from transferkit.quickstart import embedded_emoji

        return embedded_emoji()
    data = tk.load_data(str(fortunes))
    train, _, test = tk.split_data(data, val=0.0, test=0.4, seed=0)
    return train, test


def parse(candidate: str) -> tuple[str, str, bool]:
    random = candidate.endswith("~random")
    name = candidate.removesuffix("~random")
    backbone, _, layer = name.partition("@")
    return backbone, layer or "output", not random


def linear_probe_accuracy(name, layer, pretrained, train, test, args) -> tuple[float, float]:
    """Test accuracy of a logistic regression on the frozen layer features (and its seconds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import torch

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    bb = create_backbone(name, pretrained=pretrained, image_size=args.image_size)
    x_tr = extract_layer_features(bb, train, [layer], device=args.device)[layer].numpy()
    x_te = extract_layer_features(bb, test, [layer], device=args.device)[layer].numpy()
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=args.probe_c)).fit(x_tr, train.targets)
    return float((clf.predict(x_te) == test.targets).mean()), time.perf_counter() - t0


def finetune_accuracy(name, layer, pretrained, train, test, args) -> tuple[float, float]:
    cfg = tk.FitConfig(backbone=name, layer=None if layer == "output" else layer, strategy="finetune" if pretrained else "scratch",
                       image_size=args.image_size, epochs=args.epochs, seed=args.seed, device=args.device,
                       batch_size=args.batch_size, max_length=args.max_length, on_nan="skip")
    t0 = time.perf_counter()
    trn, val, _ = tk.split_data(train, val=0.15, test=0.0, seed=0)
    res = tk.fit(None, config=cfg, splits=(trn, val, test), progress=False)
    return float(res.metrics["test"]["accuracy"]), time.perf_counter() - t0


def agreement(score: list[float], acc: list[float]) -> dict[str, float]:
    from scipy.stats import kendalltau, weightedtau

    pick = int(np.argmax(score))
    return {"tau": float(kendalltau(score, acc).statistic), "weighted_tau": float(weightedtau(score, acc).statistic),
            "regret": float(max(acc) - acc[pick]), "pick": pick}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(CANDIDATES), default="emoji")
    ap.add_argument("--candidates", help="comma-separated backbone[@layer][~random] (default: the task's 8)")
    ap.add_argument("--ground-truth", default="finetune,linear", help="finetune and/or linear")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--probe-c", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--fortunes", type=Path, default=SHARED / "fortunes" / "fortunes.jsonl")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    train, test = load_task(args.task, args.fortunes)
    cands = [c.strip() for c in (args.candidates.split(",") if args.candidates else CANDIDATES[args.task])]
    parsed = [parse(c) for c in cands]
    print(f"{args.task}: {len(train)} train / {len(test)} test, {len(train.label_names)} classes, {len(cands)} candidates", flush=True)

    # 1. rank: every layer of one backbone from one pass, on the training split only
    t0 = time.perf_counter()
    rows = {}
    for name, pretrained in dict.fromkeys((n, p) for n, _, p in parsed):
        layers = [lay for n, lay, p in parsed if (n, p) == (name, pretrained)]
        for row in score_backbone(name, train, layers, pretrained=pretrained, seed=args.seed, image_size=args.image_size,
                                  device=args.device):
            rows[(name, row.layer, pretrained)] = row
    rank_rows = [rows[p] for p in parsed]
    over = aggregate(rank_rows)
    rank_seconds = time.perf_counter() - t0
    score_seconds = sum(r.score_seconds for r in rows.values())
    print(f"ranking: {rank_seconds:.1f} s, of which scores {score_seconds:.1f} s (aggregate over {', '.join(over)})", flush=True)

    # 2. the real thing, per candidate
    truth: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    for kind in [k.strip() for k in args.ground_truth.split(",") if k.strip()]:
        run = finetune_accuracy if kind == "finetune" else linear_probe_accuracy
        truth[kind], seconds[kind] = [], []
        for cand, (name, layer, pretrained) in zip(cands, parsed):
            acc, secs = run(name, layer, pretrained, train, test, args)
            truth[kind].append(acc)
            seconds[kind].append(secs)
            print(f"{kind:>8} {cand:<32} test acc {acc:.4f} ({secs:.0f} s)", flush=True)

    # 3. agreement
    score_names = [n for n in ("logme", "hscore", "nce", "leep", "knn", "linear_cv") if any(n in r.scores for r in rank_rows)]
    report = {"task": args.task, "n_train": len(train), "n_test": len(test), "candidates": cands, "args": vars(args) | {"json_out": None},
              "rank_seconds": rank_seconds, "score_seconds": score_seconds, "aggregate_over": over, "train_seconds": {k: sum(v) for k, v in seconds.items()},
              "rows": [{"candidate": c, "dim": r.dim, "scores": r.scores, "mean_rank": r.mean_rank,
                        **{f"{k}_acc": truth[k][i] for k in truth}} for i, (c, r) in enumerate(zip(cands, rank_rows))],
              "agreement": {}}
    print(f"\n{'candidate':<32}{'dim':>6}" + "".join(f"{n:>10}" for n in score_names) + f"{'mean rank':>10}"
          + "".join(f"{k + ' acc':>14}" for k in truth))
    for c, r, i in zip(cands, rank_rows, range(len(cands))):
        print(f"{c:<32}{r.dim:>6}" + "".join(f"{r.scores[n]:>10.3f}" if n in r.scores else f"{'-':>10}" for n in score_names) + f"{r.mean_rank:>10.2f}"
              + "".join(f"{truth[k][i]:>14.4f}" for k in truth))
    for kind, acc in truth.items():
        print(f"\nagreement with {kind} test accuracy (best {max(acc):.4f}):")
        print(f"{'score':<12}{'n':>4}{'tau':>8}{'w. tau':>8}{'regret':>8}  top-1 pick")
        report["agreement"][kind] = {}
        for n in [*score_names, "aggregate"]:
            # a score missing for some candidates (LEEP/NCE need a source classifier) is judged on the others
            has = [i for i, r in enumerate(rank_rows) if n == "aggregate" or n in r.scores]
            values = [-rank_rows[i].mean_rank if n == "aggregate" else rank_rows[i].scores[n] for i in has]
            a = agreement(values, [acc[i] for i in has])
            a.update(n=len(has), pick=has[a["pick"]], regret=float(max(acc) - acc[has[a["pick"]]]))
            report["agreement"][kind][n] = a
            print(f"{n:<12}{len(has):>4}{a['tau']:>8.3f}{a['weighted_tau']:>8.3f}{a['regret']:>8.4f}  {cands[a['pick']]}")
        print(f"cost: ranking {rank_seconds:.1f} s vs {kind} all {sum(seconds[kind]):.1f} s "
              f"= {100 * rank_seconds / sum(seconds[kind]):.1f}%")
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
