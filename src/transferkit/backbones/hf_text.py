"""Text backbones through Hugging Face transformers: hub names when online, local folders offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ModelLoadError
from .base import Backbone, TextPreprocess, group_by_patterns, preprocess_from_dict


#: files of a Hugging Face folder that may ask transformers to import the folder's own Python
_HF_JSON = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")


def check_hf_folder(path: str | Path) -> None:
    """Refuse a local Hugging Face folder that would make transformers run the folder's own code
    (an ``auto_map`` in its config files) or whose ``model_type`` transformers does not know,
    before transformers reads it (it would prompt "Do you wish to run the custom code?").
    Every load passes ``trust_remote_code=False`` as well."""
    import json

    from transformers import CONFIG_MAPPING

    path = Path(path)
    for name in _HF_JSON:
        f = path / name
        if not f.is_file():
            continue
        try:
            cfg = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            raise ConfigError(f"{f} is not a readable JSON file.", "restore the model folder (or re-save it with save_pretrained).") from None
        if not isinstance(cfg, dict):
            raise ConfigError(f"{f} does not hold a JSON object.", "restore the model folder (or re-save it with save_pretrained).")
        if "auto_map" in cfg:
            raise ConfigError(f"{f} has an 'auto_map': the folder {path} asks to run its own Python code, which transferkit never does.",
                              "use a model whose architecture transformers ships (a standard model_type), without auto_map.")
        if name == "config.json" and cfg.get("model_type") not in CONFIG_MAPPING:
            raise ConfigError(f"{f} has model_type {cfg.get('model_type')!r}, which the installed transformers does not know "
                              "(transferkit never runs a model folder's own code).",
                              "use a model whose architecture transformers ships (e.g. bert), or upgrade transformers.")


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class HFTextBackbone(Backbone):
    modality = "text"
    source = "hf"

    def __init__(
        self,
        name_or_path: str | Path,
        *,
        pretrained: bool = True,
        pooling: str = "mean",
        max_length: int | None = None,
        name: str | None = None,
        _config=None,
        _tokenizer=None,
    ):
        super().__init__(name or f"hf/{name_or_path}")
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        _quiet_transformers()
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"Unknown pooling {pooling!r}.", "use --pooling mean or --pooling cls.")
        local = Path(name_or_path).is_dir()
        if local:
            check_hf_folder(name_or_path)
        try:
            # trust_remote_code=False everywhere: a model's own Python never runs, and transformers never prompts
            config = _config or AutoConfig.from_pretrained(str(name_or_path), local_files_only=local, trust_remote_code=False)
            self.tokenizer = _tokenizer or AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=local, trust_remote_code=False)
            if pretrained:
                model, info = AutoModel.from_pretrained(
                    str(name_or_path), config=config, output_loading_info=True, local_files_only=local, trust_remote_code=False
                )
                missing = [k for k in info.get("missing_keys", []) if "pooler" not in k]
                if missing:
                    raise ModelLoadError(
                        f"Weights in {name_or_path} miss {len(missing)} tensors (e.g. {missing[:2]}).",
                        "use a complete model folder.",
                    )
            else:
                model = AutoModel.from_config(config, trust_remote_code=False)
        except (ConfigError, ModelLoadError):
            raise
        except Exception as e:
            where = "folder" if local else "hub name"
            raise ConfigError(
                f"Could not load text model {name_or_path!r} ({where}; {type(e).__name__}).",
                "offline, pass a local Hugging Face folder (config.json, tokenizer, model.safetensors) "
                "or use the offline model 'minilm'.",
            ) from None
        self.model = model
        self.num_features = int(config.hidden_size)
        limit = min(int(getattr(self.tokenizer, "model_max_length", 512) or 512), 512)
        limit = min(limit, int(getattr(config, "max_position_embeddings", 512)))
        if max_length is not None and not 2 <= int(max_length) <= limit:
            # longer inputs would index past the position embeddings in the middle of training
            raise ConfigError(f"--max-length {max_length} is outside 2..{limit} for {self.name}.", f"pass --max-length {limit} or less.")
        self.preprocess = TextPreprocess(max_length=int(max_length or min(limit, 128)), pooling=pooling)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.preprocess.max_length,
            return_tensors="pt",
        )
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.pool_hidden(self.model(**batch).last_hidden_state, batch)

    def layer_groups(self) -> list[list[str]]:
        names = [n for n, _ in self.named_parameters()]
        return group_by_patterns(names, r"\.embeddings\.", r"\.layers?\.(\d+)\.")

    def feature_points(self):
        # a pooler is not part of the features: the last transformer layer's pooled output is "output"
        from .layers import points_from_groups

        groups = [g for g in self.layer_groups() if not all(".pooler." in n for n in g)]
        return points_from_groups(self, groups)

    def pool_hidden(self, hidden, batch) -> torch.Tensor:
        h = hidden[0] if isinstance(hidden, (tuple, list)) else hidden
        if self.preprocess.pooling == "cls":
            return h[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
        return (h * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def recipe(self) -> dict[str, Any]:
        return {"type": "hf", "name": self.name, "preprocess": self.preprocess.to_dict()}

    def save_assets(self, folder: Path) -> None:
        target = folder / "backbone"
        target.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(target)
        self.tokenizer.save_pretrained(target)

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], folder: Path) -> "HFTextBackbone":
        pre = preprocess_from_dict(recipe["preprocess"])
        return cls(
            folder / "backbone",
            pretrained=False,
            pooling=pre.pooling,
            max_length=pre.max_length,
            name=recipe.get("name"),
        )
