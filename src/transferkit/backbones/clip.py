"""CLIP-style image-text backbones through Hugging Face transformers ``CLIPModel``.

The backbone's features are the projected image embeddings; ``encode_texts`` gives the projected
text embeddings of the same space (for zero-shot class prompts). Neither is L2-normalised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ModelLoadError
from .base import Backbone, ImagePreprocess, group_by_patterns, preprocess_from_dict

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def is_clip_folder(path: Path) -> bool:
    """A local Hugging Face folder whose config.json says ``"model_type": "clip"``."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type") == "clip"
    except (OSError, ValueError, AttributeError):
        return False


def _pooled(out: Any) -> torch.Tensor:
    # transformers 5 returns an output object (pooler_output = projected embeddings); 4.x a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _preprocess(processor: dict[str, Any] | None, vision_config, image_size: int | None) -> ImagePreprocess:
    native = int(vision_config.image_size)
    if not processor:
        return ImagePreprocess(input_size=int(image_size or native), mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
                               interpolation="bicubic", crop_pct=1.0)
    crop, size = processor.get("crop_size") or native, processor.get("size") or native
    crop = int(crop["height"] if isinstance(crop, dict) else crop)
    size = int(size.get("shortest_edge") or size.get("height") if isinstance(size, dict) else size)
    crop_pct = min(1.0, crop / size) if processor.get("do_center_crop", True) else 1.0
    resample = processor.get("resample", 3)
    bicubic = resample == 3 or "bicubic" in str(resample).lower()
    return ImagePreprocess(
        input_size=int(image_size or crop),
        mean=tuple(float(v) for v in processor.get("image_mean") or OPENAI_CLIP_MEAN),
        std=tuple(float(v) for v in processor.get("image_std") or OPENAI_CLIP_STD),
        interpolation="bicubic" if bicubic else "bilinear",
        crop_pct=float(crop_pct),
    )


class ClipBackbone(Backbone):
    modality = "image"
    source = "hf"

    def __init__(self, name_or_path: str | Path, *, pretrained: bool = True, name: str | None = None,
                 image_size: int | None = None):
        super().__init__(name or f"clip/{name_or_path}")
        from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

        from .hf_text import _quiet_transformers

        _quiet_transformers()
        src, local = str(name_or_path), Path(name_or_path).is_dir()
        if local:
            from .hf_text import check_hf_folder

            check_hf_folder(src)
        try:
            # trust_remote_code=False everywhere: a model's own Python never runs, and transformers never prompts
            config = CLIPConfig.from_pretrained(src, local_files_only=local, trust_remote_code=False)
            self.tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=local, trust_remote_code=False)
            if pretrained:
                model, info = CLIPModel.from_pretrained(src, config=config, output_loading_info=True, local_files_only=local,
                                                    trust_remote_code=False)
                missing = list(info.get("missing_keys", []))
                if missing:
                    raise ModelLoadError(f"Weights in {src} miss {len(missing)} tensors (e.g. {missing[:2]}).",
                                         "use a complete CLIP model folder.")
            else:
                model = CLIPModel._from_config(config)
        except (ConfigError, ModelLoadError):
            raise
        except Exception as e:
            where = "folder" if local else "hub name"
            raise ConfigError(
                f"Could not load CLIP model {src!r} ({where}; {type(e).__name__}).",
                "offline, pass a local Hugging Face CLIP folder (config.json, tokenizer, model.safetensors, "
                "preprocessor_config.json); online, a hub name such as clip/openai/clip-vit-base-patch32.",
            ) from None
        try:
            processor = CLIPImageProcessor.from_pretrained(src, local_files_only=local, trust_remote_code=False).to_dict()
        except Exception:  # no preprocessor_config.json: the vision config's size and OpenAI mean/std
            processor = None
        self.model = model
        self.num_features = int(config.projection_dim)
        self.preprocess = _preprocess(processor, config.vision_config, image_size)
        limit = int(getattr(self.tokenizer, "model_max_length", 77) or 77)
        self.max_length = min(limit, int(config.text_config.max_position_embeddings))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # another input size than the weights' own interpolates the position embeddings
        interp = images.shape[-1] != int(self.model.config.vision_config.image_size)
        out = self.model.vision_model(pixel_values=images, interpolate_pos_encoding=interp)
        return self.model.visual_projection(_pooled(out))

    @torch.no_grad()
    def encode_texts(self, texts: list[str], device: str | torch.device = "cpu", batch_size: int = 256) -> torch.Tensor:
        """Projected (not normalised) text embeddings, float32 ``[N, projection_dim]`` on the CPU."""
        dev, before = torch.device(device), next(self.parameters()).device
        was_training = self.training
        self.eval().to(dev)
        out = []
        try:
            for start in range(0, len(texts), batch_size):
                enc = self.tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                pooled = _pooled(self.model.text_model(input_ids=enc["input_ids"].to(dev),
                                                       attention_mask=enc["attention_mask"].to(dev)))
                out.append(self.model.text_projection(pooled).float().cpu())
        finally:
            self.train(was_training).to(before)
        return torch.cat(out) if out else torch.zeros((0, self.num_features))

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    def layer_groups(self) -> list[list[str]]:
        names = [n for n, _ in self.named_parameters()]
        return group_by_patterns(names, r"^model\.vision_model\.(embeddings|pre_layrnorm)\.",
                                 r"^model\.vision_model\.encoder\.layers\.(\d+)\.")

    def recipe(self) -> dict[str, Any]:
        return {"type": "clip", "name": self.name, "preprocess": self.preprocess.to_dict()}

    def save_assets(self, folder: Path) -> None:
        from transformers import CLIPImageProcessor

        target = folder / "backbone"
        target.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(target)
        self.tokenizer.save_pretrained(target)
        pre = self.preprocess
        CLIPImageProcessor(
            size={"shortest_edge": pre.resize_size}, crop_size={"height": pre.input_size, "width": pre.input_size},
            image_mean=list(pre.mean), image_std=list(pre.std), resample=3 if pre.interpolation == "bicubic" else 2,
        ).save_pretrained(target)

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], folder: Path) -> "ClipBackbone":
        pre = preprocess_from_dict(recipe["preprocess"])
        bb = cls(folder / "backbone", pretrained=False, name=recipe.get("name"), image_size=pre.input_size)
        bb.preprocess = pre
        return bb
