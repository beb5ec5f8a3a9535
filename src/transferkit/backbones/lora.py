"""LoRA adapters on a pretrained backbone, through the ``peft`` library.

``LoraBackbone`` wraps a pretrained backbone (timm, Hugging Face text, CLIP image tower): peft
injects low-rank adapters into the chosen layers in place and freezes everything else. Only the
adapters train, and a saved model stores only them (and the head): its recipe says how to rebuild
the base with its pretrained weights (``base_id``: the backbone name or folder, ``--backbone-weights``)
plus a digest of those weights, checked when the model is loaded.

The pretrained base weights are constants here: ``named_parameters()`` lists the adapters only, so
the training loop, freezing and the optimiser never see the base, and the base's BatchNorm layers
stay in eval mode (their statistics are part of the pretrained weights and are not saved).
``merge(model)`` folds the adapters into the base weights for export: a plain model of the base type.
"""

from __future__ import annotations

import copy
import hashlib
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import ConfigError, ModelLoadError
from .base import Backbone, preprocess_from_dict

# Hugging Face text models whose family peft does not know: attention query/value projections
HF_FALLBACK = r"(^|\.)(query|value|q_proj|v_proj|q_lin|v_lin)$"
CLIP_DEFAULT = r"^vision_model\..*\.(q_proj|v_proj)$"  # the image tower only: the text tower takes no part


def _eligible(module: nn.Module) -> bool:
    """Layers peft's LoRA adapts (and can merge): linear, ungrouped convolutions, embeddings."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module.groups == 1
    if isinstance(module, (nn.Linear, nn.Embedding)):
        return True
    try:
        from transformers.pytorch_utils import Conv1D  # GPT-2 style linear layers
    except ImportError:  # pragma: no cover
        return False
    return isinstance(module, Conv1D)


def _timm_default(name: str, module: nn.Module) -> bool:
    """Pointwise (1x1) convolutions and linear layers: the dense parts of a CNN or a ViT."""
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and tuple(module.kernel_size) == (1, 1)
    return isinstance(module, nn.Linear)


def select_targets(base: Backbone, pattern: str | None) -> list[str]:
    """Names (relative to ``base.model``) of the layers to adapt: modules whose name matches the
    regular expression ``pattern`` (``re.search``), or the default for the backbone's family."""
    from .clip import ClipBackbone
    from .timm_backbone import TimmBackbone

    network = base.model
    eligible = [(n, m) for n, m in network.named_modules() if n and _eligible(m)]
    what = f"--lora-targets {pattern!r} matches"
    if pattern is not None:
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"Invalid --lora-targets {pattern!r}: not a regular expression ({e}).",
                              "pass e.g. 'query|value' or 'conv_pw'.") from None
        names = [n for n, _ in eligible if rx.search(n)]
    elif isinstance(base, TimmBackbone):
        what = "the default LoRA targets (pointwise convolutions and linear layers) match"
        names = [n for n, m in eligible if _timm_default(n, m)]
    elif isinstance(base, ClipBackbone):
        what = "the default LoRA targets (image-tower q/v projections) match"
        names = [n for n, _ in eligible if re.search(CLIP_DEFAULT, n)]
    else:
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as known

        suffixes = known.get(getattr(getattr(network, "config", None), "model_type", None))
        what = "the default LoRA targets (attention query/value projections) match"
        if suffixes:
            names = [n for n, _ in eligible if n.rsplit(".", 1)[-1] in suffixes]
        else:
            names = [n for n, _ in eligible if re.search(HF_FALLBACK, n)]
    if not names:
        examples = ", ".join(n for n, _ in (eligible[:2] + eligible[-2:])) or "(none)"
        raise ConfigError(
            f"{what} no layer of {base.name} that LoRA can adapt (linear, ungrouped convolution or embedding layers).",
            f"pass --lora-targets with a regular expression over layer names such as {examples}.",
        )
    return names


def weights_digest(module: nn.Module) -> str:
    """Digest of a module's state (parameters and buffers). Pooler weights are left out: a Hugging
    Face folder without them gets random ones at every load, and pooled features never use them."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        if ".pooler." in f".{k}":
            continue
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}:{t.dtype}:{tuple(v.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class LoraBackbone(Backbone):
    """A pretrained backbone with peft LoRA adapters; only the adapters are trainable and saved."""

    source = "lora"

    def __init__(self, base: Backbone, *, r: int = 8, alpha: float = 16.0, dropout: float = 0.0, targets: str | None = None,
                 target_modules: list[str] | None = None, base_id: dict[str, Any] | None = None, digest: str | None = None):
        super().__init__(f"{base.name}+lora")
        if not isinstance(getattr(base, "model", None), nn.Module):
            raise ConfigError(f"LoRA cannot wrap the backbone {base.name} (no inner network).",
                              "use a timm, Hugging Face text or audio, or CLIP backbone without --layer.")
        from peft import LoraConfig, get_peft_model

        self.modality = base.modality
        self.preprocess = base.preprocess
        self.num_features = base.num_features
        self.source_head = base.source_head
        self.base_digest = weights_digest(base)
        if digest is not None and digest != self.base_digest:
            raise ModelLoadError(
                f"The pretrained weights of {base.name} differ from those this LoRA model was trained on.",
                "load it where the original base weights are (the same backbone name, folder or --backbone-weights file).",
            )
        self.targets = targets
        self.target_modules = list(target_modules) if target_modules is not None else select_targets(base, targets)
        self.lora = {"r": int(r), "alpha": float(alpha), "dropout": float(dropout)}
        config = LoraConfig(r=int(r), lora_alpha=float(alpha), lora_dropout=float(dropout), target_modules=self.target_modules,
                            bias="none")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers deprecations peft touches
            peft_model = get_peft_model(base.model, config)
        # peft injected the adapters into base.model in place; the PeftModel around it is kept for
        # merging and counting but not registered as a submodule (state-dict keys stay base.model.*)
        self.__dict__["peft_model"] = peft_model
        self.base = base
        self.base_id = dict(base_id or {})
        self._adapters = {f"base.model.{n}" for n, p in base.model.named_parameters() if p.requires_grad}
        if not self._adapters:  # pragma: no cover - select_targets found layers, so peft added adapters
            raise ConfigError(f"peft added no LoRA adapter to {base.name}.", "check --lora-targets.")
        self._norms = [m for m in base.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    # --- the adapters are the only parameters the rest of transferkit sees
    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]:
        """The trainable adapter parameters only; the pretrained base weights are constants
        (``all_named_parameters`` lists every one)."""
        skip = len(prefix) + 1 if prefix else 0
        for name, p in super().named_parameters(prefix=prefix, recurse=recurse, remove_duplicate=remove_duplicate):
            if name[skip:] in self._adapters:
                yield name, p

    def all_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return super().named_parameters()

    def recipe_state_keys(self) -> set[str]:
        """State-dict keys rebuilt from the recipe (the pretrained base), never written to model files."""
        return {k for k in self.state_dict() if k not in self._adapters}

    def parameter_counts(self) -> dict[str, int]:
        trainable, total = self.peft_model.get_nb_trainable_parameters()
        return {"adapter": int(trainable), "base_total": int(total)}

    def train(self, mode: bool = True) -> "LoraBackbone":
        super().train(mode)
        for m in self._norms:  # pretrained normalisation statistics never change
            m.eval()
        return self

    def forward(self, batch: Any) -> torch.Tensor:
        return self.base(batch)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.base.tokenize(texts)

    def pool_hidden(self, hidden: Any, batch: Any) -> torch.Tensor:
        return self.base.pool_hidden(hidden, batch)

    def feature_points(self):
        return self.base.feature_points()

    def layer_groups(self) -> list[list[str]]:
        """The adapters grouped by the base's layer groups (input -> output)."""
        groups = [[f"base.{n}" for n in g if f"base.{n}" in self._adapters] for g in self.base.layer_groups()]
        groups = [g for g in groups if g]
        placed = {n for g in groups for n in g}
        rest = sorted(self._adapters - placed)
        if rest:  # pragma: no cover - every base parameter is in a group
            groups.append(rest)
        return groups

    # --- persistence
    def recipe(self) -> dict[str, Any]:
        return {
            "type": "lora",
            "name": self.name,
            "base": self.base.recipe(),
            "base_id": self.base_id,
            "base_digest": self.base_digest,
            "lora": {**self.lora, "targets": self.targets, "target_modules": self.target_modules},
            "preprocess": self.preprocess.to_dict(),
        }

    def save_assets(self, folder: Path) -> None:
        self.base.save_assets(folder)

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], folder: Path) -> "LoraBackbone":
        """Rebuild the base with its pretrained weights (checked against the saved digest), then the
        adapters (zero update until the saved adapter weights are loaded)."""
        bid = recipe["base_id"]
        base = create_base(bid)
        base.preprocess = preprocess_from_dict(recipe["base"]["preprocess"])
        lo = recipe["lora"]
        return cls(base, r=lo["r"], alpha=lo["alpha"], dropout=lo["dropout"], targets=lo.get("targets"),
                   target_modules=lo["target_modules"], base_id=bid, digest=recipe.get("base_digest"))


def base_id_of(backbone: str, weights: str | Path | None = None, image_size: int | None = None, pooling: str = "mean",
               max_length: int | None = None, window: float | None = None, eval_windows: str = "center") -> dict[str, Any]:
    """How to rebuild a pretrained base: its name (local paths made absolute) and options."""
    from . import BACKBONES

    family = backbone in BACKBONES or backbone.startswith(("timm/", "hf/", "clip/", "audio/"))
    name = backbone if family or not Path(backbone).exists() else str(Path(backbone).resolve())
    out = {"backbone": name, "backbone_weights": str(Path(weights).resolve()) if weights else None,
           "image_size": image_size, "pooling": pooling, "max_length": max_length}
    if window is not None or eval_windows != "center":
        out.update(window=window, eval_windows=eval_windows)
    return out


def create_base(base_id: dict[str, Any]) -> Backbone:
    from . import create_backbone

    return create_backbone(base_id["backbone"], pretrained=True, weights=base_id.get("backbone_weights"),
                           image_size=base_id.get("image_size"), pooling=base_id.get("pooling") or "mean",
                           max_length=base_id.get("max_length"), window=base_id.get("window"),
                           eval_windows=base_id.get("eval_windows") or "center")


def lora_backbone(backbone: str, *, weights: str | Path | None = None, image_size: int | None = None, pooling: str = "mean",
                  max_length: int | None = None, layer: str | None = None, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                  targets: str | None = None, window: float | None = None, eval_windows: str = "center") -> LoraBackbone:
    """The pretrained backbone ``backbone`` (a name, ``timm/<arch>``, ``hf/<name>``, ``audio/<name>`` or a folder) with LoRA adapters."""
    if layer and layer != "output":
        raise ConfigError("--layer is not supported with LoRA yet.", "drop --layer, or use --strategy finetune on the cut backbone.")
    bid = base_id_of(backbone, weights, image_size, pooling, max_length, window, eval_windows)
    return LoraBackbone(create_base(bid), r=r, alpha=alpha, dropout=dropout, targets=targets, base_id=bid)


def merge(model):
    """A copy of a LoRA ``TransferModel`` with the adapters merged into the base weights (peft
    ``merge_and_unload``): a plain model of the base's type, saved with all its weights."""
    from ..model import TransferModel

    if not isinstance(model.backbone, LoraBackbone):
        raise ConfigError("merge needs a model with a LoRA backbone.", "train one with --strategy lora.")
    twin = copy.deepcopy(model)
    bb: LoraBackbone = twin.backbone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        merged = bb.peft_model.merge_and_unload()
    base = bb.base
    base.model = merged
    base.requires_grad_(True)
    info = copy.deepcopy(model.info)
    info["lora"] = {**info.get("lora", {}), "merged": True}
    n = sum(p.numel() for p in base.parameters()) + sum(p.numel() for p in twin.head.parameters())
    info.update({"trainable_parameters": n, "total_parameters": n})  # a plain model: every weight trains again
    out = TransferModel(base, twin.head, head_spec=twin.head_spec, task=twin.task, label_names=twin.label_names,
                        strategy=twin.strategy, info=info)
    return out.train(model.training)
