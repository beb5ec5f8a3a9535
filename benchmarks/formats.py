"""Reading the same images from a CSV manifest, a Parquet file of image bytes and a Hugging Face
``save_to_disk`` folder: load (``load_data``), screening (``screen``) and the decoded image store,
first with an empty cache, then again (warm).

Data: the 1,906 Google-style emoji of ``../shared/datasets/emoji-styles`` (64 px PNG), label
``category`` (9 classes). The Parquet file and the save_to_disk folder hold the PNG bytes
(``{"bytes", "path"}`` structs, ``ClassLabel`` labels), written once before timing. Each format
gets its own empty cache, so the cold figures include writing the bytes into the cache's blobs.

    python benchmarks/formats.py [--size 96] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMOJI = ROOT.parent / "shared" / "datasets" / "emoji-styles"


def build(work: Path) -> dict[str, Path]:
    import datasets

    rows = list(csv.DictReader(open(EMOJI / "emoji.csv", encoding="utf-8")))
    files = [EMOJI / "images" / "google" / r["image"] for r in rows]
    keep = [(f, r["category"]) for f, r in zip(files, rows) if f.is_file()]
    (work / "emoji.csv").write_text("image,label\n" + "".join(f"{f},{c}\n" for f, c in keep))
    names = sorted({c for _, c in keep})
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": f.read_bytes(), "path": f.name} for f, _ in keep],
                                     "label": [names.index(c) for _, c in keep]}, features=feats)
    ds.save_to_disk(str(work / "saved"))
    ds.to_parquet(str(work / "emoji.parquet"))
    return {"csv": work / "emoji.csv", "parquet (bytes)": work / "emoji.parquet", "save_to_disk (bytes)": work / "saved"}


def measure(src: Path, size: int, cache: Path) -> dict[str, float]:
    import transferkit as tk
    from transferkit.data.store import image_store
    from transferkit.data.validate import screen

    os.environ["TRANSFERKIT_CACHE"] = str(cache)
    out = {}
    for run in ("cold", "warm"):
        t0 = time.perf_counter()
        data = tk.load_data(src)
        t1 = time.perf_counter()
        screen(data, "train")
        t2 = time.perf_counter()
        image_store(data.inputs, size)
        t3 = time.perf_counter()
        out.update({f"{run}_load_s": t1 - t0, f"{run}_screen_s": t2 - t1, f"{run}_store_s": t3 - t2, "n": len(data)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sources = build(work)
        results = {name: measure(src, args.size, work / f"cache-{i}") for i, (name, src) in enumerate(sources.items())}
    print(f"{'format':24} {'n':>5} {'load s':>14} {'screen s':>14} {'store s':>14}   (cold / warm)")
    for name, r in results.items():
        cells = [f"{r[f'cold_{k}_s']:6.2f} / {r[f'warm_{k}_s']:5.2f}" for k in ("load", "screen", "store")]
        print(f"{name:24} {r['n']:5d} " + " ".join(f"{c:>14}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
