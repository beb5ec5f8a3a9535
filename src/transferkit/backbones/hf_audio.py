"""Audio encoders through Hugging Face transformers: wav2vec2, HuBERT, WavLM, data2vec-audio, AST,
the Whisper encoder... by hub name (``audio/<name>``, online) or a local folder (offline).

The model's own ``AutoFeatureExtractor`` turns each window's real samples into the encoder's input
(normalised waveform for wav2vec2-style models, log-mel or filter-bank frames for Whisper and AST),
on the CPU like a tokenizer. Features are the encoder's last hidden states averaged over the
frames that hold real samples (the frames in proportion to the real part of the padded input;
AST's patch tokens over its fixed-length spectrogram are all averaged). Layer groups: the
convolutional (or patch) front end, then each transformer layer; modules between the front end and
the first layer (positional convolution) join the first layer's group, those after the last
(final norm) the last one's. Remote code is never run (``trust_remote_code=False``).
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelLoadError
from .audio_base import AudioBackbone, audio_preprocess, masked_mean
from .base import preprocess_from_dict

# model types whose AutoModel is an audio encoder (or an encoder-decoder whose encoder takes audio)
AUDIO_MODEL_TYPES = {
    "wav2vec2", "wav2vec2-conformer", "wav2vec2-bert", "hubert", "wavlm", "data2vec-audio", "unispeech", "unispeech-sat", "sew",
    "sew-d", "audio-spectrogram-transformer", "whisper", "clap_audio_model",
}
FRONT = r"^model\.(masked_spec_embed$|feature_extractor\.|feature_projection\.|conv1\.|conv2\.|embed_positions\.|embeddings\.)"
LAYER = r"\.layers?\.(\d+)\."


def is_audio_folder(path: Path) -> bool:
    """A Hugging Face folder whose config.json names an audio model type."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("model_type") in AUDIO_MODEL_TYPES


class HFAudioBackbone(AudioBackbone):
    source = "hf-audio"

    def __init__(self, name_or_path: str | Path, *, pretrained: bool = True, window: float | None = None, eval_windows: str = "center",
                 name: str | None = None):
        super().__init__(name or f"audio/{name_or_path}")
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

        from .hf_text import _quiet_transformers

        _quiet_transformers()
        local = Path(name_or_path).is_dir()
        kw = {"local_files_only": local, "trust_remote_code": False}
        try:
            config = AutoConfig.from_pretrained(str(name_or_path), **kw)
            self.extractor = AutoFeatureExtractor.from_pretrained(str(name_or_path), **kw)
            if pretrained:
                model, info = AutoModel.from_pretrained(str(name_or_path), config=config, output_loading_info=True, **kw)
                missing = [k for k in info.get("missing_keys", []) if not k.startswith(("decoder.", "model.decoder."))]
                if missing:
                    raise ModelLoadError(f"Weights in {name_or_path} miss {len(missing)} tensors (e.g. {missing[:2]}).",
                                         "use a complete model folder.")
            else:
                model = AutoModel.from_config(config, trust_remote_code=False)
        except (ConfigError, ModelLoadError):
            raise
        except Exception as e:
            where = "folder" if local else "hub name"
            raise ConfigError(
                f"Could not load audio model {name_or_path!r} ({where}; {type(e).__name__}).",
                "offline, pass a local Hugging Face folder (config.json, preprocessor_config.json, model.safetensors) "
                "or use an offline audio model: crepe_tiny, crepe_full, speaker_ge2e.",
            ) from None
        if getattr(config, "is_encoder_decoder", False):
            model = model.get_encoder()  # Whisper: the audio encoder only
        self.model = model
        self.model_type = str(config.model_type)
        self.num_features = int(getattr(config, "hidden_size", None) or getattr(config, "d_model"))
        self.sample_rate = int(getattr(self.extractor, "sampling_rate", 16000))
        self._accepts = set(inspect.signature(model.forward).parameters)
        self.preprocess = audio_preprocess(self.sample_rate, 1.0, window, eval_windows)

    # ------------------------------------------------------------------ features
    @property
    def _waveform_input(self) -> bool:
        return int(getattr(self.extractor, "feature_size", 1)) == 1

    def _fraction(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Real part of each padded encoder input (None: pool every frame)."""
        length = batch["length"].to(torch.float64)
        if self._waveform_input:
            return length / length.max().clamp_min(1)
        n = getattr(self.extractor, "n_samples", None)  # Whisper pads every input to n_samples
        return (length / n).clamp(max=1.0) if n else None

    def _inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        wave, length = batch["wave"], batch["length"]
        arrays = [w[: max(1, int(n))].detach().float().cpu().numpy() for w, n in zip(wave, length)]
        kw: dict[str, Any] = {"sampling_rate": self.sample_rate, "return_tensors": "pt"}
        if self._waveform_input:
            kw.update(padding=True, return_attention_mask=True)
        feats = self.extractor(arrays, **kw)
        out = {k: v.to(wave.device) for k, v in feats.items() if k in self._accepts and isinstance(v, torch.Tensor)}
        if self._waveform_input and not getattr(self.extractor, "return_attention_mask", False):
            out.pop("attention_mask", None)  # models trained without one (group-norm wav2vec2) take zero padding only
        return out

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.model(**self._inputs(batch)).last_hidden_state
        return self.pool_frames(h, batch)

    def pool_frames(self, hidden: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = hidden[0] if isinstance(hidden, (tuple, list)) else hidden
        frac = self._fraction(batch)
        if frac is None:
            return h.mean(1)
        n = torch.ceil(frac * h.shape[1]).long().clamp(1, h.shape[1]).to(h.device)
        return masked_mean(h, torch.arange(h.shape[1], device=h.device).unsqueeze(0) < n.unsqueeze(1))

    # ------------------------------------------------------------------ layers
    def layer_groups(self) -> list[list[str]]:
        front, layers, before, after = [], {}, [], []
        for n, _ in self.named_parameters():
            if re.search(FRONT, n):
                front.append(n)
            elif m := re.search(LAYER, n):
                layers.setdefault(int(m.group(1)), []).append(n)
            else:
                (after if layers else before).append(n)
        groups = [layers[k] for k in sorted(layers)]
        if not groups:
            return [g for g in (front, before + after) if g]
        groups[0] = before + groups[0]
        groups[-1] = groups[-1] + after
        return ([front] if front else []) + groups

    def _layer_list(self) -> tuple[str, nn.ModuleList]:
        lists = [(n, m) for n, m in self.model.named_modules() if isinstance(m, nn.ModuleList) and re.search(r"(^|\.)layers?$", n)]
        if not lists:  # pragma: no cover - every supported encoder has one
            raise ConfigError(f"{self.name}: no transformer layer list found.", "use its output features (no --layer).")
        return max(lists, key=lambda nm: len(nm[1]))

    def feature_points(self):
        points = []
        for front in ("feature_projection", "embeddings"):
            mod = getattr(self.model, front, None)
            if isinstance(mod, nn.Module):
                points.append((front, mod))
                break
        prefix, layers = self._layer_list()
        points += [(f"{prefix}.{i}", layers[i]) for i in range(len(layers) - 1)]
        return points + [("output", None)]

    # ------------------------------------------------------------------ persistence
    def recipe(self) -> dict[str, Any]:
        return {"type": "hf-audio", "name": self.name, "preprocess": self.preprocess.to_dict()}

    def save_assets(self, folder: Path) -> None:
        target = folder / "backbone"
        target.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(target)
        self.extractor.save_pretrained(target)

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], folder: Path) -> "HFAudioBackbone":
        bb = cls(folder / "backbone", pretrained=False, name=recipe.get("name"))
        bb.preprocess = preprocess_from_dict(recipe["preprocess"])
        return bb
