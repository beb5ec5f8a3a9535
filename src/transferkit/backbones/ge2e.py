"""A GE2E speaker encoder (Wan et al., 2018) with the weights of the PyPI package resemblyzer.

Rebuilt here (resemblyzer imports webrtcvad and librosa at import time): 40-band mel *power*
frames (25 ms Hann windows every 10 ms at 16 kHz), a 3-layer LSTM of 256 units, the last layer's
final hidden state through a 256x256 linear layer and ReLU, L2-normalised: a 256-d unit
embedding. Resemblyzer's preprocessing is kept: the waveform's level is raised to -30 dBFS (never
lowered) and the model sees partial utterances of 160 frames (1.6 s), so the default window is
1.6 s and a shorter clip is zero-padded after its end, as resemblyzer pads. Its voice-activity
trimming (webrtcvad) is left out. The three LSTM layers are separate modules (``lstm.0..2``, the
package's ``lstm.*_l{k}`` tensors renamed), so each layer is a feature point of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .audio_base import AudioBackbone, audio_preprocess, load_strict, load_tensors, mel_power, package_available, package_file
from .base import preprocess_from_dict

SAMPLE_RATE = 16000
N_FFT, HOP, N_MELS, PARTIAL_FRAMES = 400, 160, 40, 160
TARGET_DBFS = -30.0


def available() -> bool:
    return package_available("resemblyzer")


class GE2ENet(nn.Module):
    def __init__(self, hidden: int = 256, layers: int = 3, embedding: int = 256):
        super().__init__()
        self.lstm = nn.ModuleList([nn.LSTM(N_MELS if k == 0 else hidden, hidden, batch_first=True) for k in range(layers)])
        self.linear = nn.Linear(hidden, embedding)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """``[N, frames, 40]`` -> ``[N, 256]`` unit vectors."""
        x, h = mels, None
        for layer in self.lstm:
            x, (h, _) = layer(x)
        e = torch.relu(self.linear(h[-1]))
        return e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)


def package_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """resemblyzer's ``model_state`` -> ``GE2ENet`` names (the two GE2E loss scalars dropped)."""
    out = {}
    for k, v in state.items():
        if k.startswith("similarity_"):
            continue
        if k.startswith("lstm."):
            base, layer = k[len("lstm."):].rsplit("_l", 1)
            k = f"lstm.{int(layer)}.{base}_l0"
        out[k] = v
    return out


class GE2EBackbone(AudioBackbone):
    source = "ge2e"

    def __init__(self, *, pretrained: bool = True, window: float | None = None, eval_windows: str = "center", name: str | None = None):
        super().__init__(name or "speaker_ge2e")
        self.model = GE2ENet()
        if pretrained:
            path = package_file("resemblyzer", "pretrained.pt", "The offline model speaker_ge2e")
            ckpt = load_tensors(path)
            state = ckpt.get("model_state") if isinstance(ckpt, dict) else None
            if not isinstance(state, dict):
                from ..errors import ModelLoadError

                raise ModelLoadError(f"{path} has no 'model_state'.", "reinstall resemblyzer==0.1.4 (pip install --no-deps).")
            load_strict(self.model, package_state(state), str(path))
        self.num_features = 256
        self.preprocess = audio_preprocess(SAMPLE_RATE, PARTIAL_FRAMES * HOP / SAMPLE_RATE, window, eval_windows)

    def mels(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[N, frames, 40]``: level raised to -30 dBFS over the clip's real samples, mel power frames."""
        wave, length = batch["wave"].float(), batch["length"]
        mask = torch.arange(wave.shape[-1], device=wave.device).unsqueeze(0) < length.unsqueeze(1)
        power = (wave.pow(2) * mask).sum(1) / mask.sum(1).clamp_min(1)
        dbfs = 10 * torch.log10(power.clamp_min(1e-20))
        gain = torch.pow(10.0, (TARGET_DBFS - dbfs).clamp_min(0.0) / 20)  # increase only, as resemblyzer
        mel = mel_power(wave * gain.unsqueeze(1), SAMPLE_RATE, N_FFT, HOP, N_MELS)
        frames = max(1, wave.shape[-1] // HOP)  # resemblyzer's partials: window samples / hop frames
        return mel[:, :, :frames].transpose(1, 2)

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(self.mels(batch))

    def pool_frames(self, hidden: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """An LSTM layer's output ``(out, (h, c))`` -> its final hidden state, as the top layer's."""
        if isinstance(hidden, tuple) and len(hidden) == 2 and isinstance(hidden[1], tuple):
            return hidden[1][0][-1]
        return super().pool_frames(hidden, batch)

    def layer_groups(self) -> list[list[str]]:
        names = [n for n, _ in self.named_parameters()]
        groups = [[n for n in names if n.startswith(f"model.lstm.{k}.")] for k in range(len(self.model.lstm))]
        groups[-1] += [n for n in names if n.startswith("model.linear.")]
        return groups

    def recipe(self) -> dict[str, Any]:
        return {"type": "ge2e", "name": self.name, "preprocess": self.preprocess.to_dict()}

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], folder: Path) -> "GE2EBackbone":
        bb = cls(pretrained=False, name=recipe.get("name"))
        bb.preprocess = preprocess_from_dict(recipe["preprocess"])
        return bb
