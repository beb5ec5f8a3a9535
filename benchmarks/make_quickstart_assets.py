"""Build the small labelled image dataset embedded in ``transferkit`` for ``transferkit quickstart``.

Source: ``../shared/datasets/emoji-styles`` (Google-style images + ``emoji.csv``).
Output: ``src/transferkit/_assets/emoji/`` with

* ``images/<code>.png``  -- the Google (Noto Emoji) images, losslessly re-encoded,
* ``labels.csv``         -- ``image,category,name,split`` in the order of ``emoji.csv``,
* ``LICENSE.md``         -- attribution, licences, how the subset was taken, counts,
* ``LICENSE-APACHE-2.0.txt`` -- full text of the Apache License 2.0 (images).

Split (the reference protocol of the shared datasets README): ``numpy.random.default_rng(0)
.permutation(n)`` over the rows of ``emoji.csv`` in file order; the first ``int(0.6 * n)``
permuted rows (1,143 of 1,906) are ``train``, the rest (763) ``test``.

Size budget: the output folder must stay at or under 8,000,000 bytes (sum of file sizes). Every
PNG is re-encoded with Pillow ``optimize=True`` (same mode, same 64x64 size, decoded pixels checked
to be identical; the original bytes are kept when they are smaller). Only if that is still over
budget are train rows subsampled, stratified by category (seeded), down to 7,800,000 bytes, then
test rows the same way. Every run with the same inputs (and Pillow version) gives the same files.

Run from the repository root::

    python benchmarks/make_quickstart_assets.py [--shared PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
HARD_LIMIT = 8_000_000  # bytes, whole output folder
SUBSAMPLE_TARGET = 7_800_000  # bytes, when subsampling is needed
SPLIT_SEED = 0
TRAIN_FRACTION = 0.6
SUBSAMPLE_SEED = 0
EXPECTED_N = 1906
EXPECTED_TRAIN = 1143

APACHE_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
APACHE_FILE = "LICENSE-APACHE-2.0.txt"
APACHE_CANDIDATES = ("/usr/share/common-licenses/Apache-2.0",)

MIT_EMOJI_DATA = """\
The MIT License (MIT)

Copyright (c) 2013 Cal Henderson

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


# --------------------------------------------------------------------------- helpers


def read_rows(shared: Path) -> list[dict[str, str]]:
    with open(shared / "emoji.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    names = [r["image"] for r in rows]
    if len(set(names)) != len(names):
        raise SystemExit("emoji.csv: duplicate image names")
    for n in names:
        if "/" in n or "\\" in n or not n.endswith(".png"):
            raise SystemExit(f"emoji.csv: unexpected image name {n!r}")
    return rows


def assign_split(n: int) -> list[str]:
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_train = int(TRAIN_FRACTION * n)  # 1143 for n=1906 (round() would give 1144)
    split = ["test"] * n
    for i in perm[:n_train]:
        split[int(i)] = "train"
    return split


def reencode(src: Path) -> tuple[bytes, bool]:
    """Smallest lossless PNG encoding of ``src`` (decoded pixels verified identical) and whether
    it differs from the source file's bytes."""
    raw = src.read_bytes()
    with Image.open(io.BytesIO(raw)) as im:
        im.load()
        if im.size != (64, 64):
            raise SystemExit(f"{src}: size {im.size}, expected 64x64")
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
        new = buf.getvalue()
        with Image.open(io.BytesIO(new)) as im2:
            im2.load()
            same = (
                im2.mode == im.mode
                and im2.size == im.size
                and np.array_equal(np.asarray(im), np.asarray(im2))
                and np.array_equal(np.asarray(im.convert("RGBA")), np.asarray(im2.convert("RGBA")))
            )
    if not same:
        raise SystemExit(f"{src}: re-encoding changed the pixels")
    return (new, True) if len(new) < len(raw) else (raw, False)


def apache_text(out: Path) -> str:
    candidates = [out / APACHE_FILE, *map(Path, APACHE_CANDIDATES)]
    for c in candidates:
        if c.is_file():
            data = c.read_bytes()
            if hashlib.sha256(data).hexdigest() == APACHE_SHA256:
                return data.decode("utf-8")
    raise SystemExit(
        "need the canonical Apache License 2.0 text (sha256 "
        f"{APACHE_SHA256}); put it at {out / APACHE_FILE}"
    )


def stratified_keep(idx: list[int], rows, frac: float, rng_seed: int) -> set[int]:
    """Keep ceil(frac * n_c) rows of each category c, chosen by a seeded permutation."""
    by_cat: dict[str, list[int]] = {}
    for i in idx:
        by_cat.setdefault(rows[i]["category"], []).append(i)
    keep: set[int] = set()
    for k, cat in enumerate(sorted(by_cat)):
        members = by_cat[cat]
        order = np.random.default_rng([rng_seed, k]).permutation(len(members))
        m = max(1, math.ceil(frac * len(members)))
        keep.update(members[int(j)] for j in order[:m])
    return keep


def render_labels(rows, split, kept: list[int]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "category", "name", "split"])
    for i in kept:
        w.writerow([rows[i]["image"], rows[i]["category"], rows[i]["name"], split[i]])
    return buf.getvalue().encode("utf-8")


def render_license(rows, split, kept: list[int], subsample_note: str, n_reencoded: int) -> bytes:
    n_all = len(rows)
    per_split = Counter(split[i] for i in kept)
    cats = sorted({r["category"] for r in rows})
    table = Counter((rows[i]["category"], split[i]) for i in kept)
    lines = [
        "# Embedded emoji dataset: sources, licences and subset",
        "",
        "This folder holds a small labelled image dataset used by `transferkit quickstart`.",
        "It is a redistributed subset of third-party material; the notices below apply to it,",
        "not the licence of transferkit itself.",
        "",
        "## Images: Google Noto Emoji (Apache License 2.0)",
        "",
        "`images/*.png` are the Google-style emoji images (Noto Emoji, by Google,",
        "https://github.com/googlefonts/noto-emoji) as distributed, 64x64 px, in the npm package",
        "`emoji-datasource-google` v16.0.0. The Noto Emoji project states that its tools and most",
        "image resources are under the Apache License, Version 2.0, and that most flag images (from",
        "its `third_party/region-flags`) are in the public domain or otherwise exempt from copyright.",
        f"The full licence text is in `{APACHE_FILE}` next to this file",
        "(also at http://www.apache.org/licenses/LICENSE-2.0).",
        "",
        *(
            [f"Modifications: {n_reencoded:,} of the PNG files were losslessly re-encoded (Pillow,",
             "`optimize=True`) to save space; image mode, size and decoded pixel values are",
             "unchanged. The other files are byte-identical copies."]
            if n_reencoded else
            ["The PNG files are byte-identical copies of the source files (a lossless re-encoding",
             "with Pillow `optimize=True` was tried and saved nothing)."]
        ),
        "Files are named by the emoji's code point(s) as in the source package. Most are RGBA;",
        "a few are grey+alpha (LA) or palette (P) PNGs: convert to RGBA when loading.",
        "",
        "## Labels: emoji-data / emoji-datasource-google v16.0.0 (MIT)",
        "",
        "`labels.csv` (columns `image,category,name,split`) takes the category and the Unicode name",
        "of each emoji from the metadata of the npm package `emoji-datasource-google` v16.0.0 of",
        "the emoji-data project (https://github.com/iamcal/emoji-data), MIT licence:",
        "",
        "```text",
        MIT_EMOJI_DATA.rstrip("\n"),
        "```",
        "",
        "## What was taken and how",
        "",
        f"Source: all {n_all:,} emoji of the `emoji-styles` development dataset (Google style only),",
        "built from the package above. Categories: the 9 Unicode emoji groups.",
        "",
        "Split (same protocol as transferkit's reference benchmarks): rows of the source",
        "`emoji.csv` in file order, `numpy.random.default_rng(0).permutation(n)`, the first",
        f"`int(0.6 * n)` permuted rows are `train` ({EXPECTED_TRAIN:,} of {n_all:,}), the rest",
        f"`test` ({n_all - EXPECTED_TRAIN:,}). The split is by emoji identity.",
        "",
        subsample_note,
        "",
        f"Images in this folder: {len(kept):,} (train {per_split['train']:,},"
        f" test {per_split['test']:,}).",
        "",
        "| category | train | test | total |",
        "|---|---:|---:|---:|",
    ]
    for c in cats:
        tr, te = table[(c, "train")], table[(c, "test")]
        lines.append(f"| {c} | {tr} | {te} | {tr + te} |")
    lines.append(f"| **all** | {per_split['train']} | {per_split['test']} | {len(kept)} |")
    lines += [
        "",
        "Generated by `benchmarks/make_quickstart_assets.py` in the transferkit repository.",
        "",
    ]
    return "\n".join(lines).encode("utf-8")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=REPO_ROOT / "../shared/datasets/emoji-styles")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "src/transferkit/_assets/emoji")
    args = ap.parse_args(argv)
    shared = args.shared if args.shared.is_absolute() else (REPO_ROOT / args.shared)
    out = args.out if args.out.is_absolute() else (REPO_ROOT / args.out)
    shared, out = shared.resolve(), out.resolve()

    rows = read_rows(shared)
    n = len(rows)
    split = assign_split(n)
    n_train = split.count("train")
    if n != EXPECTED_N or n_train != EXPECTED_TRAIN:
        raise SystemExit(f"unexpected counts: n={n}, train={n_train}")

    img_dir = shared / "images" / "google"
    png: dict[int, bytes] = {}
    reencoded: set[int] = set()
    orig_bytes = 0
    for i, r in enumerate(rows):
        src = img_dir / r["image"]
        orig_bytes += src.stat().st_size
        png[i], changed = reencode(src)
        if changed:
            reencoded.add(i)
    opt_bytes = sum(len(b) for b in png.values())
    print(f"google PNGs: {n} files, {orig_bytes:,} bytes as shipped, "
          f"{opt_bytes:,} bytes after lossless re-encoding ({len(reencoded)} files smaller)")

    apache = apache_text(out).encode("utf-8")

    def total(kept: list[int], note: str) -> int:
        return (sum(len(png[i]) for i in kept) + len(render_labels(rows, split, kept))
                + len(render_license(rows, split, kept, note, len(reencoded & set(kept))))
                + len(apache))

    full_note = "All emoji of the source are included; no subsampling was needed."
    kept = list(range(n))
    note = full_note
    if total(kept, note) > HARD_LIMIT:
        train_idx = [i for i in range(n) if split[i] == "train"]
        test_idx = [i for i in range(n) if split[i] == "test"]
        found = False
        for which in ("train", "test"):
            for pct in range(99, 0, -1):
                frac = pct / 100
                if which == "train":
                    keep = stratified_keep(train_idx, rows, frac, SUBSAMPLE_SEED) | set(test_idx)
                    note = (f"To fit the package size budget, every test row was kept and the train "
                            f"rows were subsampled to {pct}% per category (at least 1 per category; "
                            f"seeded permutation, seed {SUBSAMPLE_SEED}); split membership of the kept "
                            f"rows is unchanged.")
                else:
                    keep = (stratified_keep(train_idx, rows, 0.01, SUBSAMPLE_SEED)
                            | stratified_keep(test_idx, rows, frac, SUBSAMPLE_SEED + 1))
                    note = (f"To fit the package size budget, the train rows were subsampled to 1% "
                            f"and the test rows to {pct}% per category (at least 1 per category; "
                            f"seeded permutations); split membership of the kept rows is unchanged.")
                kept = sorted(keep)
                if total(kept, note) <= SUBSAMPLE_TARGET:
                    found = True
                    break
            if found:
                break
        if not found:
            raise SystemExit("cannot fit the size budget")
        print("SUBSAMPLED:", note)

    # ---- write
    (out / "images").mkdir(parents=True, exist_ok=True)
    wanted = {rows[i]["image"] for i in kept}
    for old in (out / "images").glob("*.png"):
        if old.name not in wanted:
            old.unlink()
    for i in kept:
        dst = out / "images" / rows[i]["image"]
        if not dst.is_file() or dst.read_bytes() != png[i]:
            dst.write_bytes(png[i])
    (out / "labels.csv").write_bytes(render_labels(rows, split, kept))
    n_re = len(reencoded & set(kept))
    (out / "LICENSE.md").write_bytes(render_license(rows, split, kept, note, n_re))
    (out / APACHE_FILE).write_bytes(apache)

    # ---- check and report
    files = [p for p in out.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    n_png = len(list((out / "images").glob("*.png")))
    per_split = Counter(split[i] for i in kept)
    per_cat = Counter((rows[i]["category"], split[i]) for i in kept)
    print(f"kept {len(kept)} of {n} emoji: train {per_split['train']}, test {per_split['test']}")
    for c in sorted({r['category'] for r in rows}):
        print(f"  {c:<20} train {per_cat[(c, 'train')]:>4}  test {per_cat[(c, 'test')]:>4}")
    print(f"output: {out}")
    print(f"files: {len(files)} ({n_png} PNG), total {size:,} bytes (limit {HARD_LIMIT:,})")
    if n_png != len(kept) or size > HARD_LIMIT:
        print("ERROR: file count or size check failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
