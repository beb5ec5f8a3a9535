"""A transferred model: backbone + task head + everything needed to predict on raw inputs.

Saved as one folder: ``model.safetensors`` (all weights, never pickle), ``config.json`` (backbone
recipe, preprocessing, label names, task, strategy, metrics, library version) and, for text
backbones, the tokenizer under ``backbone/``. The folder is written atomically.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .backbones import backbone_from_recipe
from .backbones.base import Backbone
from .config import check_int
from .errors import DataError, ModelLoadError
from ._cache import file_digest
from .heads import make_head

FORMAT_VERSION = 1


class TransferModel(nn.Module):
    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        *,
        head_spec: dict[str, Any],
        task: str,
        label_names: list[str],
        strategy: str,
        info: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.head_spec = dict(head_spec)
        self.task = task
        self.label_names = list(label_names)
        self.strategy = strategy
        self.info: dict[str, Any] = dict(info or {})  # metrics, fit config, timings

    @property
    def modality(self) -> str:
        return self.backbone.modality

    def forward(self, batch: Any) -> torch.Tensor:
        return self.head(self.backbone(batch))

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict_outputs(self, inputs: Sequence[str] | Any, batch_size: int = 64, device: str | torch.device = "auto", prepared=None) -> np.ndarray:
        """Raw outputs (logits or regression values) for raw inputs, in order."""
        from .inputs import autocast, make_batch, prepare, resolve_device

        check_int(batch_size, "--batch-size", 1)
        dev = resolve_device(device) if isinstance(device, str) else device
        if prepared is None:  # new inputs: decoded for this call (on the GPU for JPEGs on CUDA), not cached
            prepared = prepare(self.backbone, list(inputs), device=dev, cache=False)
        n = len(prepared)
        was_training = self.training
        self.eval().to(dev)
        outs = []
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            with autocast(dev):
                outs.append(self(make_batch(self.backbone, prepared, idx, dev)).float())  # on the device until the end
        self.train(was_training)
        if not outs:
            return np.zeros((0, self.head_spec["out"]), dtype=np.float32)
        return torch.cat(outs).cpu().numpy()

    def predict(self, inputs: Sequence[str] | str, batch_size: int = 64, top_k: int | None = None, device: str = "auto",
                support=None) -> list[dict[str, Any]]:
        """Predict raw inputs (image or audio paths, or texts; or a table of them: a manifest, Parquet/Arrow
        file, Hugging Face datasets folder, DataFrame; or images as bytes/PIL). Each result has ``label`` and ``probabilities``
        (classification), ``labels`` (multilabel) or ``value`` (regression).

        ``support`` (labelled data: class folders, a manifest or ``TaskData``): classify into the
        support set's classes instead, by nearest prototype of this model's backbone features."""
        check_int(batch_size, "--batch-size", 1)
        if top_k is not None:
            check_int(top_k, "--top-k", 1)
        if support is not None:
            from .fewshot import prototype_model

            return prototype_model(support, backbone=self.backbone, device=device).predict(inputs, batch_size, top_k, device)
        from .data.formats import as_inputs

        table = as_inputs(inputs)  # a table of inputs (its label column unread), a DataFrame, bytes or PIL images
        if table is not None:
            inputs = table
        elif isinstance(inputs, (str, Path)):
            inputs = [str(inputs)]
        inputs = [str(x) for x in inputs]
        if self.modality != "text":
            missing = [x for x in inputs if not Path(x).is_file()]
            if missing:
                what = "Image" if self.modality == "image" else self.modality.capitalize()
                raise DataError(f"{what} file {missing[0]} does not exist.", f"pass existing {self.modality} files or folders.")
        out = self.predict_outputs(inputs, batch_size=batch_size, device=device)
        results = []
        for x, row in zip(inputs, out):
            if self.task == "multitask":
                from .multitask import format_predictions

                results.append({"input": x, "tasks": format_predictions(self.head_spec["tasks"], row)})
            elif self.task == "classification":
                p = torch.softmax(torch.from_numpy(row), 0).numpy()
                order = np.argsort(-p)[: top_k or len(p)]
                results.append({
                    "input": x,
                    "label": self.label_names[int(order[0])],
                    "probabilities": {self.label_names[int(i)]: float(p[i]) for i in order},
                })
            elif self.task == "multilabel":
                p = 1 / (1 + np.exp(-row))
                results.append({
                    "input": x,
                    "labels": [n for n, pi in zip(self.label_names, p) if pi >= 0.5],
                    "probabilities": {n: float(pi) for n, pi in zip(self.label_names, p)},
                })
            else:
                results.append({"input": x, "value": float(row[0])})
        return results

    def evaluate(self, data, batch_size: int = 64, device: str = "auto") -> dict[str, Any]:
        """Metrics on labelled data: a ``TaskData`` or anything ``load_data`` reads (labels mapped by name)."""
        from .data.dataset import TaskData, load_data
        from .metrics import task_metrics

        if not isinstance(data, TaskData):
            data = load_data(data, task=self.task, label_names=self.label_names if self.task != "regression" else None)
        out = self.predict_outputs(data.inputs, batch_size=batch_size, device=device)
        return task_metrics(self.task, data.targets, out, self.label_names, self.head_spec.get("tasks"))

    def add_support(self, data, device: str = "auto", progress: bool = False) -> "TransferModel":
        """Add labelled examples to a prototype model (few-shot or zero-shot): examples of known
        classes update their prototypes, new class names become new classes. No retraining."""
        from .data.dataset import TaskData, load_data
        from .errors import ConfigError
        from .features import extract_features
        from .fewshot.prototypes import check_support
        from .heads import PrototypeHead

        if not isinstance(self.head, PrototypeHead):
            raise ConfigError(f"add_support needs a prototype model; this one has a trained {self.head_spec['kind']} head.",
                              "build one with transferkit.fewshot.prototype_model (or 'transferkit fewshot --save').")
        d = data if isinstance(data, TaskData) else load_data(data, min_classes=1)
        if d.modality != self.modality:
            raise DataError(f"{d.source} holds {d.modality} inputs; this model takes {self.modality}.", "add examples of the model's modality.")
        check_support(d, d.source)
        names = list(self.label_names)
        idx = []
        for n in d.label_names:
            if n not in names:
                names.append(n)
            idx.append(names.index(n))
        labels = torch.as_tensor(idx, dtype=torch.long)[torch.as_tensor(np.asarray(d.targets), dtype=torch.long)]
        feats = extract_features(self.backbone, d, device=device, progress=progress)
        self.head.add_examples(feats, labels)
        self.label_names = names
        self.head_spec["out"] = len(names)
        return self

    # ------------------------------------------------------------------ persistence
    def config_dict(self) -> dict[str, Any]:
        from . import __version__

        return {
            "format_version": FORMAT_VERSION,
            "transferkit_version": __version__,
            "backbone": self.backbone.recipe(),
            "head": self.head_spec,
            "task": self.task,
            "label_names": self.label_names,
            "strategy": self.strategy,
            "info": self.info,
        }

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the model folder atomically: either the old folder or the complete new one exists.

        ``folder`` must not exist, be empty, or (with ``overwrite=True``) hold a saved model; a file or
        a folder holding anything else is never replaced (``RunFolderError``). A full disk gives a
        ``StorageError`` naming the folder, and nothing half-written is left."""
        from safetensors.torch import save_model

        from ._io import atomic_dir
        from .training.rundir import check_model_target, ensure_free_space, state_bytes, storage_errors

        folder = Path(folder)
        check_model_target(folder, overwrite=overwrite)
        ensure_free_space(folder.parent, int(state_bytes(self) * 1.05) + (1 << 20), "the model")
        self.cpu()
        with storage_errors(folder), atomic_dir(folder) as tmp:
            skip = _recipe_state_keys(self)
            if skip:  # weights the backbone rebuilds from its recipe (a LoRA base) are not stored
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in self.state_dict().items() if k not in skip}, str(tmp / "model.safetensors"))
            else:
                save_model(self, str(tmp / "model.safetensors"))
            self.backbone.save_assets(tmp)
            cfg = {**self.config_dict(), "checksums": {"model.safetensors": file_digest(tmp / "model.safetensors")}}
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=_json_default) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "TransferModel":
        from safetensors.torch import load_model

        folder = Path(folder)
        cfg_path, weights = folder / "config.json", folder / "model.safetensors"
        if not folder.is_dir() or not cfg_path.is_file() or not weights.is_file():
            raise ModelLoadError(
                f"{folder} is not a transferkit model folder (needs config.json and model.safetensors).",
                "pass the folder written by 'transferkit fit' or model.save().",
            )
        from ._schema import check_model_config, read_model_config

        cfg = read_model_config(cfg_path)  # bounded size and nesting
        version = cfg.get("format_version", 0)
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise ModelLoadError(f"{folder} was saved by a newer transferkit ({cfg.get('transferkit_version')}).", "upgrade transferkit.")
        check_model_config(cfg, cfg_path)  # types, bounds and cross-field rules, before anything is built
        expected = cfg.get("checksums", {}).get("model.safetensors")
        if expected and file_digest(weights) != expected:
            raise ModelLoadError(f"{weights} is corrupted (its checksum differs from the one saved in config.json).",
                                 "restore the model folder from a backup or re-train.")
        known = {"format_version", "transferkit_version", "backbone", "head", "task", "label_names", "strategy", "info", "checksums"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            warnings.warn(f"{cfg_path}: ignoring unknown keys {unknown}", stacklevel=2)
        backbone = backbone_from_recipe(cfg["backbone"], folder)
        model = cls(
            backbone,
            make_head(cfg["head"]),
            head_spec=cfg["head"],
            task=cfg["task"],
            label_names=cfg["label_names"],
            strategy=cfg["strategy"],
            info=cfg.get("info", {}),
        )
        skip = _recipe_state_keys(model)
        try:
            missing, unexpected = load_model(model, str(weights), strict=not skip)
            if set(missing) - skip or unexpected:
                raise ValueError(f"missing {sorted(set(missing) - skip)[:3]}, unexpected {sorted(unexpected)[:3]}")
        except Exception as e:
            raise ModelLoadError(f"Weights in {weights} do not match its config.json ({e}).", "re-save the model.") from None
        return model.eval()


def _recipe_state_keys(model: TransferModel) -> set[str]:
    """State-dict keys the backbone rebuilds from its recipe (``Backbone.recipe_state_keys``, e.g. a
    LoRA backbone's pretrained base), left out of model.safetensors; none for other backbones."""
    keys = getattr(model.backbone, "recipe_state_keys", None)
    return {f"backbone.{k}" for k in keys()} if keys is not None else set()


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def load(folder: str | Path) -> TransferModel:
    """Load a saved model folder."""
    return TransferModel.load(folder)
