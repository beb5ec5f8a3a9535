"""The quickstart: the main job on the embedded emoji dataset and the offline EfficientNet-Lite0.

Trains linear-probe, fine-tune and scratch on the same split (Google-style emoji, 9 categories,
the 60/40 identity split of ``_assets/emoji/LICENSE.md``), prints a comparison table, saves the
best model and shows how to predict with it.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from .data.dataset import TaskData, split_data

ASSETS = Path(__file__).parent / "_assets" / "emoji"


def embedded_emoji(label: str = "category") -> tuple[TaskData, TaskData]:
    """The embedded dataset as (train, test) ``TaskData``: 1,143 / 763 Google emoji."""
    with open(ASSETS / "labels.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = sorted({r[label] for r in rows})

    def part(split: str) -> TaskData:
        rs = [r for r in rows if r["split"] == split]
        return TaskData(
            [str(ASSETS / "images" / r["image"]) for r in rs],
            np.asarray([names.index(r[label]) for r in rs], dtype=np.int64),
            names,
            "image",
            "classification",
            f"embedded emoji ({split})",
        )

    return part("train"), part("test")


def run(out_dir: Path, *, image_size: int | None = None, epochs: int | None = None, device: str = "auto",
        progress: bool = True, console=None, seeds: int = 1, overwrite: bool = True) -> dict:
    """``overwrite``: replace the model a previous quickstart saved in ``out_dir/model`` (anything
    else there is refused before training)."""
    from rich.console import Console

    from .training.rundir import check_model_target

    check_model_target(Path(out_dir) / "model", overwrite=overwrite, option="--out")

    from .api import compare
    from .cli import comparison_table
    from .config import FitConfig
    from .inputs import resolve_device

    console = console or Console()
    dev = resolve_device(device)
    gpu = dev.type == "cuda"
    image_size = image_size or (224 if gpu else 96)
    epochs = epochs or (15 if gpu else 12)
    train_all, test = embedded_emoji()
    train, val, _ = split_data(train_all, val=0.15, test=0.0, seed=0)
    console.print(
        f"[bold]transferkit quickstart[/bold]: emoji category task (9 classes, Google style), "
        f"{len(train)} train / {len(val)} val / {len(test)} test images, EfficientNet-Lite0 (ImageNet, offline), "
        f"{image_size}px on {dev.type}, {epochs} epochs for fine-tune and scratch."
    )
    cfg = FitConfig(backbone="efficientnet_lite0", image_size=image_size, epochs=epochs, device=device, patience=epochs)
    t0 = time.perf_counter()

    def done(name, seed, res):
        console.print(f"  {name} (seed {seed}): test accuracy {res.metrics['test']['accuracy']:.3f} in {res.seconds:.0f} s")

    cmp = compare(None, strategies=["linear-probe", "finetune"], baseline="scratch", seeds=seeds, config=cfg,
                  splits=(train, val, test), progress=progress, on_result=done)
    console.print(comparison_table(cmp, "transfer vs training from scratch (held-out Google emoji)"))
    best = cmp.best()
    path = cmp.models[best].save(Path(out_dir) / "model", overwrite=overwrite)
    example = test.inputs[0]
    console.print(f"Best: {best} ({cmp.row(best).mean:.3f} test accuracy). Saved to {path}. Total {time.perf_counter() - t0:.0f} s.")
    console.print(f"Predict with:  transferkit predict {path} {example}")
    console.print(f"Python:        import transferkit; transferkit.load('{path}').predict(['{example}'])")
    return cmp.to_dict()
