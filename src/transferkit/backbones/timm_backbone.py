"""Vision backbones through timm: hub names when online, local safetensors files or folders offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ModelLoadError
from .base import Backbone, ImagePreprocess, group_by_patterns


def _load_strict_except_head(model, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly, tolerating only the classifier's keys (timm's convention)."""
    head = model.pretrained_cfg.get("classifier", "classifier")
    heads = (head,) if isinstance(head, str) else tuple(head)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not (k.startswith(heads) and (k not in own or own[k].shape != v.shape))}
    # load_state_dict raises a bare RuntimeError on a shape mismatch: check shapes first
    reshaped = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not k.startswith(heads)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected or reshaped:
        raise ModelLoadError(
            f"Weights in {source} do not fit {model.pretrained_cfg.get('architecture', 'the model')}: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}), "
            f"{len(reshaped)} with another shape (e.g. {reshaped[:2]}).",
            "use the weights file that matches the architecture named after 'timm/'.",
        )
    model.load_state_dict(state, strict=False)


def _source_head(model, state: dict[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The pretrained classifier (weight, bias) over the source labels (ImageNet), kept for the
    transferability scores that need source predictions (LEEP, NCE); None when the weights have none."""
    head = model.get_classifier()
    if not isinstance(head, torch.nn.Linear):
        return None
    name = model.pretrained_cfg.get("classifier", "classifier")
    if state is not None and (not isinstance(name, str) or f"{name}.weight" not in state
                              or state[f"{name}.weight"].shape != head.weight.shape):
        return None
    bias = head.bias if head.bias is not None else torch.zeros(head.out_features)
    return head.weight.detach().clone(), bias.detach().clone()


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Weights file {path} does not exist.", "check the path.")
    if path.suffix != ".safetensors":
        raise ConfigError(
            f"Weights file {path} is not a .safetensors file; transferkit never unpickles weights.",
            "convert it once with safetensors.torch.save_file(state_dict, 'weights.safetensors').",
        )
    try:
        return load_file(str(path))
    except Exception as e:  # corrupt header, truncated file
        raise ModelLoadError(f"Cannot read {path}: {e}", "re-create the safetensors file.") from None


class TimmBackbone(Backbone):
    modality = "image"
    source = "timm"

    def __init__(
        self,
        arch: str,
        *,
        pretrained: bool = True,
        weights: str | Path | None = None,
        image_size: int | None = None,
        name: str | None = None,
        pretrained_cfg: dict[str, Any] | None = None,
    ):
        super().__init__(name or f"timm/{arch}")
        import timm

        self.arch = arch
        if arch not in timm.list_models() and not timm.is_model(arch):
            raise ConfigError(f"Unknown timm architecture {arch!r}.", "see timm.list_models() for names.")
        if weights is not None:
            # a local folder's own pretrained_cfg (mean/std/crop) overrides the architecture's default
            model = timm.create_model(arch, pretrained=False, pretrained_cfg_overlay=pretrained_cfg or None)
            if pretrained:
                state = read_safetensors(weights)
                _load_strict_except_head(model, state, str(weights))
                self.source_head = _source_head(model, state)
            model.reset_classifier(0)
        elif pretrained:
            try:
                model = timm.create_model(arch, pretrained=True)
            except Exception as e:
                raise ConfigError(
                    f"Could not load pretrained weights for timm/{arch} from the hub ({type(e).__name__}).",
                    "offline, pass a local file: --backbone-weights model.safetensors (Python: weights=...), "
                    "or a timm folder with config.json + model.safetensors, or use an offline model "
                    "such as efficientnet_lite0.",
                ) from None
            self.source_head = _source_head(model, None)
            model.reset_classifier(0)
        else:
            model = timm.create_model(arch, pretrained=False, num_classes=0)
        self.model = model
        self.num_features = int(getattr(model, "head_hidden_size", None) or model.num_features)
        cfg = timm.data.resolve_data_config({}, model=model)
        native = int(cfg["input_size"][-1])
        if image_size and int(image_size) != native and model.pretrained_cfg.get("fixed_input_size"):
            # e.g. ViT/Swin: position embeddings fix the input size; the forward pass would assert later
            raise ConfigError(
                f"timm/{arch} takes only {native}x{native} inputs (got --image-size {image_size}).",
                f"drop --image-size or pass {native}.",
            )
        size = int(image_size or native)
        self.preprocess = ImagePreprocess(
            input_size=size,
            mean=tuple(float(v) for v in cfg["mean"]),
            std=tuple(float(v) for v in cfg["std"]),
            interpolation=str(cfg.get("interpolation", "bicubic")),
            crop_pct=float(cfg.get("crop_pct", 0.875)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def layer_groups(self) -> list[list[str]]:
        names = [n for n, _ in self.named_parameters()]
        matcher = getattr(self.model, "group_matcher", None)
        if matcher is None:
            return group_by_patterns(names, r"^model\.(conv1|bn1|stem|patch_embed)", r"^model\.\w+\.(\d+)\.")
        from timm.models import group_parameters

        groups = group_parameters(self.model, matcher(coarse=True))
        out = [[f"model.{n}" for n in groups[k]] for k in sorted(groups)]
        return [g for g in out if g]

    def recipe(self) -> dict[str, Any]:
        return {"type": "timm", "arch": self.arch, "name": self.name, "preprocess": self.preprocess.to_dict()}

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], folder: Path) -> "TimmBackbone":
        bb = cls(recipe["arch"], pretrained=False, name=recipe.get("name"))
        from .base import preprocess_from_dict

        bb.preprocess = preprocess_from_dict(recipe["preprocess"])
        return bb


def timm_folder_config(folder: Path) -> tuple[str, dict[str, Any]] | None:
    """A timm hub-style folder has config.json with 'architecture' (and 'pretrained_cfg') beside
    model.safetensors; returns (architecture, pretrained_cfg) or None."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or not data.get("architecture"):
        return None
    pre = data.get("pretrained_cfg") if isinstance(data.get("pretrained_cfg"), dict) else {}
    keep = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
    return data["architecture"], {k: pre[k] for k in keep if k in pre}
