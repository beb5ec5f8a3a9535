"""Few-shot and zero-shot topic classification on ../shared/datasets/fortunes (25 topics, chance 0.04).

Protocol
- Split: ``transferkit.split_data(data, val=0.0, test=0.4, seed=0)`` on the JSONL as loaded by
  ``transferkit.load_data`` (labels in sorted order): per topic, the topic's row indices are
  permuted by one ``numpy.random.default_rng(0)`` (topics in label order, the same generator
  carried on), the first ``round(0.4 * n_topic)`` go to the test part and the rest to training;
  6,525 training / 4,347 test texts. The project's reference protocol is not written down: its
  "6,523 training texts" is ``int(0.6 * 10,872)``, which a per-topic split cannot give, but this
  split reproduces its zero-shot accuracy exactly (0.271) and its all-data logistic regression
  within 0.011 (0.566 vs 0.577), so it is the closest match found (a plain permutation of all rows
  gives 6,523 training texts but zero-shot 0.269). The reference's k-shot draws are unknown.
- "k per topic" (default 5): for draw d (0..draws-1), ``default_rng(d)`` picks k training texts of
  each topic (``rng.choice(..., replace=False)``, topics in label order). Every k-shot method sees
  the same support set in a draw; the table gives mean +- sd over draws (sd with ddof=1).
- Metrics: accuracy and macro-F1 on the whole test part. Nothing is tuned on it: the settings of
  the new methods and of TF-IDF were chosen on other draws (seeds 100-109) from the training
  part, scored on the rest of it (fine-tuning: on 800 of those texts per draw); the label
  descriptions (benchmarks/fortunes_labels.txt) were written once, before any scoring, and not
  changed.
- Time: wall seconds with ``torch.set_num_threads(--threads)`` (2 on the reference 2-core CPU).
  ``train_s`` = turning labelled texts into a ready model: embedding the support texts with the
  frozen encoder (measured uncached, once per draw, added to every frozen-embedding method) plus
  fitting; for fine-tuning, everything from the support set to the model. Loading MiniLM and
  embedding the test texts are not training. all-logreg and all-tfidf give fitting only (on cached
  embeddings); all-prior embeds its 6,525 texts itself (length-sorted batches, about 50 s).

Embeddings of all 10,872 texts are cached (``TRANSFERKIT_CACHE``); the first run computes them
(7.5 minutes on 2 cores when texts were still batched in input order; less now that they
are batched by length, not re-measured), reruns reuse them:

    TRANSFERKIT_CACHE=/tmp/tkc python benchmarks/fortunes.py --draws 5 --json fortunes.json
    TRANSFERKIT_CACHE=/tmp/tkc python benchmarks/fortunes.py --methods zs-names,zs-desc,prior   # seconds
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import transferkit as tk
from transferkit.features import compute_features, extract_features
from transferkit.fewshot import prototype_model
from transferkit.fewshot.text_head import text_fewshot_model
from transferkit.metrics import task_metrics
from transferkit.zeroshot import zeroshot_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "fortunes" / "fortunes.jsonl"
LABELS = ROOT / "benchmarks" / "fortunes_labels.txt"
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # the linear probe's grid
TFIDF_C = 10.0  # chosen on training-part draws 100-104 (1, 10, 100 within 0.002 of each other)

METHODS = {  # name: (k-shot?, description)
    "zs-names": (False, "zero-shot, topic names"),
    "zs-desc": (False, "zero-shot, names + descriptions"),
    "proto": (True, "prototypes (SimpleShot)"),
    "logreg": (True, "logistic regression on embeddings (linear-probe)"),
    "tfidf": (True, "TF-IDF + logistic regression"),
    "prior": (True, "label-prior prototypes (no training)"),
    "finetune": (True, "fine-tune + label prior"),
    "all-logreg": (False, "all training texts: logistic regression on embeddings"),
    "all-tfidf": (False, "all training texts: TF-IDF + logistic regression"),
    "all-prior": (False, "all training texts: label-prior prototypes"),
}


def split_indices(targets: np.ndarray, n_classes: int, test: float = 0.4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The indices behind ``tk.split_data(data, val=0, test=test, seed=seed)`` (checked in main)."""
    rng = np.random.default_rng(seed)
    tr, te = [], []
    for c in range(n_classes):
        idx = rng.permutation(np.flatnonzero(targets == c))
        n_te = int(round(len(idx) * test))
        te += idx[:n_te].tolist()
        tr += idx[n_te:].tolist()
    return np.sort(tr), np.sort(te)


def draw_support(targets: np.ndarray, train_idx: np.ndarray, n_classes: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for c in range(n_classes):
        out += rng.choice(train_idx[targets[train_idx] == c], k, replace=False).tolist()
    return np.sort(out)


def scores(y: np.ndarray, logits, names: list[str]) -> dict[str, float]:
    out = logits.detach().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    m = task_metrics("classification", y, out, names)
    return {"accuracy": float(m["accuracy"]), "macro_f1": float(m["macro_f1"])}


def tfidf_logreg(texts: list[str], y: np.ndarray, c: float):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(sublinear_tf=True)
    clf = LogisticRegression(C=c, max_iter=3000).fit(vec.fit_transform(texts), y)
    return lambda q: clf.decision_function(vec.transform(q))


def logreg_val(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray):
    """The linear probe's recipe on cached embeddings: standardise, pick C on validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(x)
    best = None
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=3000).fit(sc.transform(x), y)
        acc = float((clf.predict(sc.transform(x_val)) == y_val).mean())
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    return best[1], lambda q: best[2].decision_function(sc.transform(q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs of the 'finetune' method")
    ap.add_argument("--lr", type=float, default=1e-4, help="encoder learning rate of the 'finetune' method")
    ap.add_argument("--train-scale", type=float, default=5.0, help="cosine-logit scale while fine-tuning")
    ap.add_argument("--prior-weight", type=float, default=3.0, help="label vector = this many examples")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--labels-file", type=Path, default=LABELS)
    ap.add_argument("--json", type=Path, help="write the rows (per-draw values included) here")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)

    data = tk.load_data(args.data)
    names, y = list(data.label_names), data.targets
    n_classes = len(names)
    tr_idx, te_idx = split_indices(y, n_classes)
    train, _, test = tk.split_data(data, val=0.0, test=0.4, seed=0)
    assert train.inputs == [data.inputs[i] for i in tr_idx] and test.inputs == [data.inputs[i] for i in te_idx]
    y_te = y[te_idx]
    test_texts = list(test.inputs)
    bb = tk.create_backbone("minilm")
    t0 = time.perf_counter()
    feats = extract_features(bb, data, progress=True)  # all texts, cached
    print(f"{len(data)} texts, {n_classes} topics; train {len(tr_idx)} / test {len(te_idx)}; "
          f"embeddings ready in {time.perf_counter() - t0:.0f} s", flush=True)
    f_te = feats[te_idx]
    rows: dict[str, dict] = {}

    def record(method: str, res: dict[str, float], train_s: float, **extra) -> None:
        row = rows.setdefault(method, {"method": method, "description": METHODS[method][1],
                                       "shots": args.shots if METHODS[method][0] else None, "draws": []})
        row["draws"].append({**res, "train_s": round(train_s, 3), **extra})
        print(f"  {method:<10} acc {res['accuracy']:.4f} macro-F1 {res['macro_f1']:.4f} train {train_s:.1f} s"
              + "".join(f" {k} {v}" for k, v in extra.items()), flush=True)

    for method, kw in (("zs-names", {"labels": names}), ("zs-desc", {"labels_file": args.labels_file})):
        if method in methods:
            t = time.perf_counter()
            model = zeroshot_model(backbone=bb, **kw)
            secs = time.perf_counter() - t
            assert model.label_names == names
            with torch.no_grad():
                record(method, scores(y_te, model.head(f_te), names), secs)

    kshot = [m for m in methods if METHODS[m][0]]
    for d in range(args.draws if kshot else 0):
        s_idx = draw_support(y, tr_idx, n_classes, args.shots, d)
        support = data.subset(s_idx)
        print(f"draw {d}: {len(s_idx)} support texts", flush=True)
        t = time.perf_counter()
        compute_features(bb, support.inputs, batch_size=64)  # the frozen methods' embedding cost, uncached
        embed_s = time.perf_counter() - t
        extract_features(bb, support)  # library calls below then read the cache: fit time only
        if "proto" in methods:
            t = time.perf_counter()
            model = prototype_model(support, backbone=bb)
            with torch.no_grad():
                record("proto", scores(y_te, model.head(f_te), names), embed_s + time.perf_counter() - t)
        if "logreg" in methods:
            t = time.perf_counter()
            res = tk.fit(support, splits=(support, None, None), backbone="minilm", strategy="linear-probe", progress=False)
            secs = time.perf_counter() - t
            with torch.no_grad():
                record("logreg", scores(y_te, res.model.head(f_te), names), embed_s + secs, C=res.model.info["head_fit"]["C"])
        if "tfidf" in methods:
            t = time.perf_counter()
            predict = tfidf_logreg(list(support.inputs), support.targets, TFIDF_C)
            secs = time.perf_counter() - t
            record("tfidf", scores(y_te, predict(test_texts), names), secs)
        if "prior" in methods:
            t = time.perf_counter()
            model = text_fewshot_model(support, labels_file=args.labels_file, backbone=bb, epochs=0, prior_weight=args.prior_weight)
            secs = time.perf_counter() - t  # embeds the support itself
            with torch.no_grad():
                record("prior", scores(y_te, model.head(f_te), names), secs)
        if "finetune" in methods:
            fresh = tk.create_backbone("minilm")  # fine-tuned in place: a new copy per draw
            t = time.perf_counter()
            model = text_fewshot_model(support, labels_file=args.labels_file, backbone=fresh, epochs=args.epochs, lr=args.lr,
                                       train_scale=args.train_scale, prior_weight=args.prior_weight, seed=d)
            secs = time.perf_counter() - t
            t = time.perf_counter()
            q = compute_features(model.backbone, test_texts, batch_size=64)
            with torch.no_grad():
                record("finetune", scores(y_te, model.head(q), names), secs, eval_s=round(time.perf_counter() - t, 1))

    if any(m.startswith("all-") for m in methods):
        tr85, va15 = (tr_idx[i] for i in split_indices(y[tr_idx], n_classes, test=0.15, seed=0))  # val carved from training
        if "all-logreg" in methods:
            t = time.perf_counter()
            c, predict = logreg_val(feats[tr85].numpy(), y[tr85], feats[va15].numpy(), y[va15])
            record("all-logreg", scores(y_te, predict(f_te.numpy()), names), time.perf_counter() - t, C=c)
        if "all-tfidf" in methods:
            t = time.perf_counter()
            txt = data.inputs
            best = max(((float((tfidf_logreg([txt[i] for i in tr85], y[tr85], c)([txt[i] for i in va15]).argmax(1) == y[va15]).mean()), c)
                        for c in (1.0, 3.0, 10.0, 30.0)))
            predict = tfidf_logreg([txt[i] for i in tr_idx], y[tr_idx], best[1])
            record("all-tfidf", scores(y_te, predict(test_texts), names), time.perf_counter() - t, C=best[1])
        if "all-prior" in methods:
            t = time.perf_counter()
            model = text_fewshot_model(data.subset(tr_idx), labels_file=args.labels_file, backbone=bb, epochs=0, prior_weight=args.prior_weight)
            with torch.no_grad():
                record("all-prior", scores(y_te, model.head(f_te), names), time.perf_counter() - t)

    table = []
    for m in methods:
        if m not in rows:
            continue
        r = rows[m]
        for key in ("accuracy", "macro_f1", "train_s"):
            v = np.array([x[key] for x in r["draws"]], dtype=float)
            r[key] = float(v.mean())
            r[key + "_sd"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        table.append(r)
    print(f"\n{'method':<10} {'description':<55} {'shots':>5} {'n':>2} {'accuracy':>17} {'macro-F1':>17} {'train s':>8}")
    for r in table:
        shots = str(r["shots"]) if r["shots"] else ("all" if r["method"].startswith("all-") else "0")
        print(f"{r['method']:<10} {r['description']:<55} {shots:>5} {len(r['draws']):>2} "
              f"{r['accuracy']:.3f} +- {r['accuracy_sd']:.3f}   {r['macro_f1']:.3f} +- {r['macro_f1_sd']:.3f} {r['train_s']:8.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "protocol": {"split": "tk.split_data(val=0, test=0.4, seed=0)", "n_train": len(tr_idx), "n_test": len(te_idx),
                         "shots": args.shots, "draws": args.draws, "draw_seeds": list(range(args.draws)), "threads": args.threads,
                         "epochs": args.epochs, "lr": args.lr, "train_scale": args.train_scale, "prior_weight": args.prior_weight, "labels_file": str(args.labels_file)},
            "rows": table,
        }, indent=2))


if __name__ == "__main__":
    main()
