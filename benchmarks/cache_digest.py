"""What checking the decoded-image cache costs: a full SHA-256 of the store against a digest of its
header and sampled blocks, next to the decode it saves and a read without any check.

    python benchmarks/cache_digest.py --n-images 2000 --image-size 224 [--workers 2]

Generates JPEGs (smooth colour fields with noise, 400x300), builds the store for EfficientNet-style
preprocessing (224 px input, crop 0.875: a 256 px store), then times, each the best of --repeats:
the cold build (decode + write + checksum), a cache hit as transferkit does it (read + SHA-256
check), the same read without a check (np.load), the SHA-256 alone, and a sampled digest (header +
64 blocks of 64 KiB). Prints JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:300, 0:400]
    paths = []
    for i in range(n):
        a, b, c = rng.uniform(0, 2 * np.pi, 3)
        base = np.stack([np.sin(xx / 40 + a), np.cos(yy / 30 + b), np.sin((xx + yy) / 50 + c)], -1)
        img = (127 + 90 * base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        p = folder / f"{i:05d}.jpg"
        Image.fromarray(img).save(p, quality=90)
        paths.append(str(p))
    return paths


def sampled_digest(path: Path, blocks: int = 64, block: int = 1 << 16) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(4096))  # the .npy header
        for k in range(blocks):
            fh.seek(int(k * max(0, size - block) / max(1, blocks - 1)))
            h.update(fh.read(block))
    return h.hexdigest()


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=224, help="input size; the store is input / 0.875")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tk-digest-"))
    os.environ["TRANSFERKIT_CACHE"] = str(work / "cache")
    from transferkit._cache import file_digest
    from transferkit.data import store

    paths = make_images(work / "images", args.n_images)
    size = int(round(args.image_size / 0.875))
    t0 = time.perf_counter()
    stats: dict = {}
    store.image_store(paths, size, workers=args.workers, stats=stats)
    cold = time.perf_counter() - t0
    (entry,) = (work / "cache" / "images").glob("*.npy")
    shape = (len(paths), 3, size, size)
    hit = best(lambda: store._load(entry, shape, store.MMAP_BYTES), args.repeats)
    plain = best(lambda: np.load(entry, allow_pickle=False), args.repeats)
    sha = best(lambda: file_digest(entry), args.repeats)
    sampled = best(lambda: sampled_digest(entry), args.repeats)
    out = {
        "n_images": len(paths), "store_px": size, "store_mib": round(entry.stat().st_size / 2**20, 1), "workers": args.workers,
        "cold_build_s": round(cold, 2), "hit_with_sha256_check_s": round(hit, 3), "read_without_check_s": round(plain, 3),
        "sha256_alone_s": round(sha, 3), "sampled_digest_s": round(sampled, 4), "stats": stats,
    }
    print(json.dumps(out, indent=2))
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
