"""Audio decoding: any channel count mixed down to mono, resampled to the weights' rate.

``read_audio(path, rate)`` gives one clip as float32 samples in [-1, 1] at ``rate`` Hz. WAV, FLAC,
OGG/Vorbis, MP3, AIFF and the other formats libsndfile knows go through ``soundfile``; other
extensions (m4a, aac, ...) through ``torchaudio`` when it is installed. Resampling is ``soxr``
(high quality). Unusable files raise ``AudioReadError`` with a ``kind``, as images do.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..errors import DataError

SOUNDFILE_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64", ".rf64"}
TORCHAUDIO_EXTENSIONS = {".m4a", ".aac", ".opus", ".wma", ".webm"}
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | TORCHAUDIO_EXTENSIONS
MIN_SECONDS = 0.1  # shorter clips are "too short" for every audio model here (CREPE needs 64 ms)
SILENCE_DBFS = -60.0  # a clip whose peak stays below this is "silent"


class AudioReadError(DataError):
    """An audio file that cannot be used; ``kind`` says why.

    Kinds: ``missing_file``, ``empty_file`` (0 bytes), ``not_audio`` (e.g. a text file named .wav),
    ``truncated`` (the file ends before its header says), ``unreadable`` (unknown format, broken
    data, or a format that needs torchaudio), ``silent`` (peak below -60 dBFS) and ``too_short``
    (under 0.1 s)."""

    def __init__(self, kind: str, message: str, fix: str | None = None):
        self.kind = kind
        super().__init__(message, fix)


def _riff_truncated(path: str | Path, size: int) -> bool:
    """A RIFF/WAVE file whose header declares more bytes than the file holds (libsndfile reads
    such a file without complaint, returning only the samples present)."""
    with open(path, "rb") as fh:
        head = fh.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return False
    declared = struct.unpack("<I", head[4:8])[0]
    return declared not in (0, 0xFFFFFFFF) and declared + 8 > size


def _decode(path: str, suffix: str) -> tuple[np.ndarray, int]:
    """``([frames, channels] float32, rate)`` from soundfile, or torchaudio for other formats."""
    if suffix in SOUNDFILE_EXTENSIONS or suffix not in TORCHAUDIO_EXTENSIONS:
        import soundfile as sf

        try:
            f = sf.SoundFile(path)
        except sf.LibsndfileError as e:
            from .images import _looks_like_text

            with open(path, "rb") as fh:
                head = fh.read(1024)
            if _looks_like_text(head):
                start = " ".join(head[:40].decode("utf-8", "replace").split())
                raise AudioReadError("not_audio", f"{path} is a text file, not audio (it starts with {start!r}).",
                                     "remove it or replace it with the real recording.") from None
            raise AudioReadError("unreadable", f"Cannot read audio {path} (not an audio format soundfile knows: {e.error_string}).",
                                 "convert it to WAV or FLAC, or remove it.") from None
        with f:
            try:
                data = f.read(dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as e:
                raise AudioReadError("truncated", f"Audio file {path} ends early or is damaged ({e}).", "remove or replace the file.") from None
            return data, int(f.samplerate)
    try:
        import torchaudio
    except ImportError:
        raise AudioReadError("unreadable", f"Audio file {path}: {suffix} files need torchaudio, which is not installed.",
                             "convert it to WAV, FLAC or OGG (e.g. ffmpeg -i in.m4a out.flac).") from None
    try:
        wave, rate = torchaudio.load(path)
    except Exception as e:  # pragma: no cover - depends on torchaudio's backends
        raise AudioReadError("unreadable", f"Cannot read audio {path} ({type(e).__name__}: {e}).", "convert it to WAV or FLAC.") from None
    return wave.numpy().T.astype(np.float32), int(rate)


def read_audio(path: str | Path, rate: int | None = None, check: bool = True) -> np.ndarray:
    """One clip as mono float32 samples at ``rate`` Hz (the file's own rate when None).

    Channels are averaged (mono mix-down); ``soxr`` resamples. With ``check``, a silent clip or one
    shorter than ``MIN_SECONDS`` raises ``AudioReadError`` too."""
    path = str(path)
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise AudioReadError("missing_file", f"Audio file {path} does not exist.", "check the path in your data.") from None
    except OSError as e:
        raise AudioReadError("unreadable", f"Cannot read audio {path} ({type(e).__name__}: {e}).", "check the file.") from None
    if size == 0:
        raise AudioReadError("empty_file", f"Audio file {path} is empty (0 bytes).", "remove or replace the file.")
    if _riff_truncated(path, size):
        raise AudioReadError("truncated", f"Audio file {path} is truncated (its WAV header declares more data than the file holds).",
                             "remove or replace the file.")
    data, src_rate = _decode(path, p.suffix.lower())
    mono = data.mean(axis=1, dtype=np.float64).astype(np.float32) if data.shape[1] > 1 else data[:, 0]
    if check:
        seconds = len(mono) / max(1, src_rate)
        if seconds < MIN_SECONDS:
            raise AudioReadError("too_short", f"Audio file {path} is too short ({seconds:.3f} s; at least {MIN_SECONDS} s needed).",
                                 "remove it or use longer recordings.")
        peak = float(np.abs(mono).max()) if len(mono) else 0.0
        if peak < 10 ** (SILENCE_DBFS / 20):
            level = f"{20 * np.log10(peak):.1f} dBFS" if peak > 0 else "digital silence"
            raise AudioReadError("silent", f"Audio file {path} is silent (peak {level}, below {SILENCE_DBFS:g} dBFS).",
                                 "remove it (a recording that failed?).")
    if rate is not None and rate != src_rate:
        mono = resample(mono, src_rate, rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(x: np.ndarray, src_rate: int, rate: int) -> np.ndarray:
    """``x`` resampled from ``src_rate`` to ``rate`` Hz with soxr (high quality)."""
    if src_rate == rate:
        return x
    import soxr

    return soxr.resample(np.asarray(x, dtype=np.float32), src_rate, rate, quality="HQ").astype(np.float32)
