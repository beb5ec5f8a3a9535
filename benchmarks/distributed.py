"""Data-parallel training on CPU processes: 1 process against N (torchrun, gloo), same global batch.

    python benchmarks/distributed.py [--processes 2] [--images 480] [--image-size 64] [--epochs 3] [--batch-size 32]

Both runs train the same model (offline EfficientNet-Lite0, fine-tune) on the same generated
images with the same global batch; the single process gets all the cores' threads, each of the N
processes cores/N threads. Reported: training samples per second over the epochs after the first
(the epoch time in metrics.jsonl, which includes that epoch's validation), the ratio N/1, and the
largest weight difference between the two final models (without augmentation and dropout the
runs follow the same trajectory up to float rounding and BatchNorm batch statistics, which each
process computes on its own part of the batch).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_images(root: Path, n: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        cls = f"c{i % 4}"
        arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        arr[..., i % 3] = 60 * (i % 4)  # a class-dependent channel level
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / cls / f"{i:05d}.png")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(n: int, data: Path, out: Path, args, cores: int) -> dict:
    fit = ["fit", str(data), "--backbone", "efficientnet_lite0", "--strategy", "finetune", "--image-size", str(args.image_size),
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--no-augment", "--dropout", "0", "--device", "cpu",
           "--patience", "0", "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // n)), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "transferkit", *fit] if n == 1 else [
        str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(n), "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "transferkit", *fit]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    n_train = json.loads((out / "report.json").read_text())["data"]["n_train"]
    later = [e["seconds"] for e in epochs[1:]] or [epochs[0]["seconds"]]
    return {"processes": n, "samples_per_s": n_train * len(later) / sum(later), "wall_s": wall, "epoch_seconds": [e["seconds"] for e in epochs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--images", type=int, default=480)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="tk-dist-"))
    os.environ.setdefault("TRANSFERKIT_CACHE", str(work / "cache"))
    data = make_images(work / "data", args.images, args.image_size)
    rows = [run(1, data, work / "one", args, cores), run(args.processes, data, work / "many", args, cores)]
    from safetensors.torch import load_file

    a, b = load_file(str(work / "one" / "model" / "model.safetensors")), load_file(str(work / "many" / "model" / "model.safetensors"))
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    for r in rows:
        print(f"{r['processes']} process(es): {r['samples_per_s']:.1f} training samples/s (epochs 2+), wall {r['wall_s']:.1f} s, "
              f"epoch seconds {r['epoch_seconds']}")
    print(f"ratio {rows[1]['samples_per_s'] / rows[0]['samples_per_s']:.2f} ({args.processes} vs 1 process, {cores} cores); "
          f"max weight difference {diff:.2e}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"rows": rows, "max_weight_diff": diff, "cores": cores, "args": vars(args) | {"json_out": None}},
                                            indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
