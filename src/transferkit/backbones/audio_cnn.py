"""A small CNN on log-mel spectrograms, randomly initialised: the from-scratch audio baseline.

64 mel bands (25 ms Hann windows every 10 ms at 16 kHz, log(power + 1e-6)), a BatchNorm over the
input, then four blocks of 3x3 convolution, BatchNorm and ReLU (32, 64, 128, 128 channels; 2x2
max-pooling after the first three), features averaged over frequency and over the frames that
hold real samples: 128-d. About 0.24 M parameters. It has no pretrained weights: train it with
``--strategy scratch`` (or finetune, which trains the same random start).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .audio_base import AudioBackbone, audio_preprocess, masked_mean, mel_power, valid_frames
from .base import preprocess_from_dict

SAMPLE_RATE = 16000
N_FFT, HOP, N_MELS = 400, 160, 64
CHANNELS = (32, 64, 128, 128)


class AudioCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_norm = nn.BatchNorm2d(1)
        blocks, cin = [], 1
        for i, cout in enumerate(CHANNELS):
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            if i < len(CHANNELS) - 1:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            cin = cout
        self.blocks = nn.Sequential(*blocks)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        """``[N, 1, mels, frames]`` -> ``[N, C, mels', frames']``."""
        return self.blocks(self.input_norm(logmel))


class AudioCNNBackbone(AudioBackbone):
    source = "audio_cnn"

    def __init__(self, *, pretrained: bool = False, window: float | None = None, eval_windows: str = "center", name: str | None = None):
        super().__init__(name or "audio_cnn")
        self.model = AudioCNN()  # no pretrained weights exist: ``pretrained`` changes nothing
        self.num_features = CHANNELS[-1]
        self.preprocess = audio_preprocess(SAMPLE_RATE, 1.0, window, eval_windows)

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logmel = torch.log(mel_power(batch["wave"], SAMPLE_RATE, N_FFT, HOP, N_MELS) + 1e-6).unsqueeze(1)
        return self.pool_frames(self.model(logmel), batch)

    def pool_frames(self, hidden: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = hidden.mean(dim=2).transpose(1, 2)  # [N, frames', C]
        return masked_mean(h, valid_frames(batch, h.shape[1]))

    def layer_groups(self) -> list[list[str]]:
        names = [n for n, _ in self.named_parameters()]
        groups = [[n for n in names if n.startswith(f"model.blocks.{i}.")] for i in range(len(CHANNELS))]
        groups[0] = [n for n in names if n.startswith("model.input_norm.")] + groups[0]
        return groups

    def feature_points(self):
        return [(f"blocks.{i}", self.model.blocks[i]) for i in range(len(CHANNELS) - 1)] + [("output", None)]

    def recipe(self) -> dict[str, Any]:
        return {"type": "audio_cnn", "name": self.name, "preprocess": self.preprocess.to_dict()}

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], folder: Path) -> "AudioCNNBackbone":
        bb = cls(name=recipe.get("name"))
        bb.preprocess = preprocess_from_dict(recipe["preprocess"])
        return bb
