"""Audio benchmarks on the shared offline data sets (2-core CPU settings; results as JSON).

Tasks (``--tasks``, comma-separated):
- ``family``: instrument family (16 classes) on ``instrument-notes/fluidr3``, split by pitch: train
  on pitches 48/60/72 (15% of it held out for validation, stratified, seed 0), test on 55/67/79.
  Linear probes (``transferkit fit --strategy linear-probe``) on each offline audio model and on the
  random log-mel CNN; the CNN trained from scratch (``--strategy scratch``); CREPE tiny fine-tuned.
- ``finetune``: CREPE tiny fine-tuned on the family task (also with ``family --finetune``).
- ``rank``: ``transferkit.rank`` on the family training split (every layer of each candidate,
  LogME, H-score, kNN, CV probe), against each candidate's real linear-probe test accuracy
  (per layer: the same standardised logistic regression, C chosen on the validation split).
- ``shift``: family, trained on all of fluidr3, tested on all of timgm6mb (the other sample set):
  ``transferkit adapt`` methods with the target clips unlabelled.
- ``accents``: the 20 spoken words, trained on 4 accents, tested on en-gb-scotland and en-029.
- ``windows``: centre window vs sliding windows at prediction (family, 0.5 s windows).
- ``fewshot``: 5-way 1- and 5-shot episodes over the 20 words (``fewshot-eval``, 600 episodes, 5 queries).

    TRANSFERKIT_CACHE=/tmp/tkc-audio python benchmarks/audio.py --tasks family,rank,accents,fewshot,shift
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
NOTES, WORDS = SHARED / "instrument-notes", SHARED / "spoken-words"
TRAIN_PITCHES, TEST_PITCHES = {"48", "60", "72"}, {"55", "67", "79"}


def manifests(work: Path) -> dict[str, Path]:
    work.mkdir(parents=True, exist_ok=True)
    notes = list(csv.DictReader(open(NOTES / "notes.csv")))
    words = list(csv.DictReader(open(WORDS / "words.csv")))
    out = {}

    def write(name, rows, path_key, label_key, root):
        p = work / f"{name}.csv"
        p.write_text("file,label\n" + "".join(f"{root / r[path_key]},{r[label_key]}\n" for r in rows))
        out[name] = p

    write("family_train", [r for r in notes if r["soundfont"] == "fluidr3" and r["pitch"] in TRAIN_PITCHES], "file", "family", NOTES)
    write("family_test", [r for r in notes if r["soundfont"] == "fluidr3" and r["pitch"] in TEST_PITCHES], "file", "family", NOTES)
    write("fluidr3_all", [r for r in notes if r["soundfont"] == "fluidr3"], "file", "family", NOTES)
    write("timgm6mb_all", [r for r in notes if r["soundfont"] == "timgm6mb"], "file", "family", NOTES)
    held = {"en-gb-scotland", "en-029"}
    write("words_train", [r for r in words if r["accent"] not in held], "file", "word", WORDS)
    write("words_test", [r for r in words if r["accent"] in held], "file", "word", WORDS)
    write("words_all", words, "file", "word", WORDS)
    return out


def fit_row(m, name, **kw):
    import transferkit as tk

    t = time.perf_counter()
    res = tk.fit(m["family_train"], test_data=m["family_test"], progress=False, **kw)
    row = {"name": name, "test_acc": round(res.metrics["test"]["accuracy"], 4), "macro_f1": round(res.metrics["test"]["macro_f1"], 4),
           "n_test": res.metrics["test"]["n"], "seconds": round(time.perf_counter() - t, 1), "options": kw}
    print(json.dumps(row), flush=True)
    return row


def task_family(m, args):
    rows = []
    for bb in args.models:
        rows.append(fit_row(m, f"linear-probe {bb}", backbone=bb, strategy="linear-probe", audio_window=args.window))
    rows.append(fit_row(m, "linear-probe audio_cnn (random features)", backbone="audio_cnn", strategy="linear-probe", audio_window=args.window))
    rows.append(fit_row(m, "scratch audio_cnn", backbone="audio_cnn", strategy="scratch", epochs=args.epochs, lr=3e-3,
                        audio_window=args.window, patience=args.epochs))
    if args.finetune:
        rows += task_finetune(m, args)
    return rows


def task_finetune(m, args):
    return [fit_row(m, "finetune crepe_tiny", backbone="crepe_tiny", strategy="finetune", epochs=args.ft_epochs,
                    audio_window=args.window, patience=args.ft_epochs)]


def task_windows(m, args):
    """Prediction windows: the centre window vs sliding windows averaged (both for the probe's
    training and test features), 0.5 s windows over the 1 s notes."""
    rows = []
    for bb in args.window_models:
        for mode in ("center", "sliding"):
            rows.append(fit_row(m, f"linear-probe {bb}, {mode} windows", backbone=bb, strategy="linear-probe", audio_window=0.5,
                                audio_eval=mode))
    return rows


def task_rank(m, args):
    """Scores from frozen features of the training split vs linear probes' test accuracy, per layer."""
    from scipy.stats import kendalltau
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    import transferkit as tk
    from transferkit.backbones import create_backbone
    from transferkit.backbones.layers import point_names
    from transferkit.data import load_data, split_data
    from transferkit.features import extract_layer_features

    t = time.perf_counter()
    report = tk.rank(m["family_train"], args.models, layers="all", scratch=False, scores=["logme", "hscore", "knn", "linear_cv"],
                     progress=False, audio_window=args.window)
    rank_s = time.perf_counter() - t
    full = load_data(m["family_train"])
    train, val, _ = split_data(full, val=0.15, test=0.0, seed=0)
    test = load_data(m["family_test"], label_names=full.label_names)
    acc = {}
    for name in args.models:
        bb = create_backbone(name, window=args.window)
        points = point_names(bb)
        f = {k: extract_layer_features(bb, d, points) for k, d in (("train", train), ("val", val), ("test", test))}
        for p in points:
            sc = StandardScaler().fit(f["train"][p].numpy())
            x = {k: sc.transform(f[k][p].numpy()) for k in f}
            best = max((LogisticRegression(C=c, max_iter=3000).fit(x["train"], train.targets) for c in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)),
                       key=lambda e: (e.predict(x["val"]) == val.targets).mean())
            acc[(name, p)] = float((best.predict(x["test"]) == test.targets).mean())
    rows = [{"candidate": f"{r.backbone}@{r.layer}", "mean_rank": r.mean_rank, **{k: round(v, 4) for k, v in r.scores.items()},
             "probe_test_acc": round(acc[(r.backbone, r.layer)], 4)} for r in report.rows]
    truth = [acc[(r.backbone, r.layer)] for r in report.rows]
    taus = {"aggregate": kendalltau([-(r.mean_rank or 0) for r in report.rows], truth).statistic}
    for s in ("logme", "hscore", "knn", "linear_cv"):
        taus[s] = kendalltau([r.scores[s] for r in report.rows], truth).statistic
    best = max(truth)
    out = {"rows": rows, "kendall_tau": {k: round(float(v), 3) for k, v in taus.items()},
           "top1_regret": round(best - truth[0], 4), "rank_seconds": round(rank_s, 1)}
    print(json.dumps(out, indent=1), flush=True)
    return out


def task_shift(m, args):
    from transferkit.adapt import adapt
    from transferkit.config import AdaptConfig, FitConfig

    rows = []
    for method in args.methods:
        t = time.perf_counter()
        cfg = FitConfig(backbone=args.shift_backbone, epochs=args.shift_epochs, audio_window=args.window, lr=args.shift_lr)
        res = adapt(m["fluidr3_all"], m["timgm6mb_all"], target_test=m["timgm6mb_all"], config=cfg, adapt_config=AdaptConfig(method=method),
                    baseline=False, diagnostics=False, progress=False)
        r = res.report["rows"][0]
        row = {"method": method, "target_acc": round(r["target_mean"], 4), "target_f1": round(r["target_f1_mean"], 4),
               "source_test_acc": round(r.get("source_mean", float("nan")), 4), "seconds": round(time.perf_counter() - t, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def task_accents(m, args):
    import transferkit as tk

    rows = []
    for name, kw in [(f"linear-probe {b}", {"backbone": b, "strategy": "linear-probe"}) for b in args.models] + [
            ("scratch audio_cnn", {"backbone": "audio_cnn", "strategy": "scratch", "epochs": args.epochs, "patience": args.epochs})]:
        t = time.perf_counter()
        res = tk.fit(m["words_train"], test_data=m["words_test"], progress=False, **kw)
        row = {"name": name, "test_acc": round(res.metrics["test"]["accuracy"], 4), "macro_f1": round(res.metrics["test"]["macro_f1"], 4),
               "n_test": res.metrics["test"]["n"], "seconds": round(time.perf_counter() - t, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def task_fewshot(m, args):
    import transferkit as tk

    rows = []
    for b in args.models:
        for r in tk.fewshot_eval(m["words_all"], backbone=b, ways=5, shots=(1, 5), queries=5, episodes=600, seed=0):
            row = {"backbone": b, **r.to_dict()}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="family,rank,accents,fewshot,shift")
    ap.add_argument("--models", default="crepe_tiny,crepe_full,speaker_ge2e")
    ap.add_argument("--window", type=float, default=None, help="--audio-window for the instrument tasks (default: each model's own)")
    ap.add_argument("--epochs", type=int, default=15, help="scratch epochs")
    ap.add_argument("--finetune", action="store_true", help="also fine-tune crepe_tiny on the family task")
    ap.add_argument("--ft-epochs", type=int, default=5)
    ap.add_argument("--window-models", default="crepe_tiny,speaker_ge2e")
    ap.add_argument("--methods", default="source-only,adabn,dann,coral,self-training")
    ap.add_argument("--shift-backbone", default="audio_cnn")
    ap.add_argument("--shift-epochs", type=int, default=10)
    ap.add_argument("--shift-lr", type=float, default=3e-3)
    ap.add_argument("--work", default="/tmp/transferkit-audio-bench")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.models = [b for b in args.models.split(",") if b]
    args.methods = [x for x in args.methods.split(",") if x]
    args.window_models = [b for b in args.window_models.split(",") if b]
    m = manifests(Path(args.work))
    results = {"args": {k: v for k, v in vars(args).items()}}
    for task in args.tasks.split(","):
        results[task] = globals()[f"task_{task}"](m, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
