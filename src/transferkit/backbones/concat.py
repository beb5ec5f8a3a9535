"""Several backbones as one: their pooled features side by side (model stacking).

``ConcatBackbone`` holds its members in an ``nn.ModuleList``; its features are each member's pooled
features, concatenated in member order. With ``normalise`` (the default) each member's block is
standardised with the training mean/std (buffers, saved with the weights; identity until
``set_normalisation``) and then scaled by ``1/sqrt(dim)``, so every block has about unit squared
norm and no member dominates by its width.

Inputs. Text members must share one tokenizer and max length: the batch is tokenised once and
every member reads it. Image members may differ in preprocessing: the concat backbone's own
``preprocess`` has the largest input size and the widest field of view (largest ``crop_pct``); in
``forward`` each member whose preprocessing differs gets its own input: the outer normalisation is
undone, the centre part matching the member's field of view is cropped, resized (antialiased) to
the member's size and normalised with the member's mean/std. ``member_view(i)`` is member ``i``
behind that conversion as a backbone of its own, so its features can be extracted (and cached)
per member and are exactly the block that ``forward`` computes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import AudioPreprocess, Backbone, ImagePreprocess
from .layers import OUTPUT


def _tokenizer(backbone: Backbone):
    while not hasattr(backbone, "tokenizer") and hasattr(backbone, "inner"):
        backbone = backbone.inner
    return getattr(backbone, "tokenizer", None)


def _same_tokenizer(a, b) -> bool:
    if a is None or b is None:
        return False
    return type(a).__name__ == type(b).__name__ and a.get_vocab() == b.get_vocab()


def outer_preprocess(members: list[Backbone]) -> ImagePreprocess:
    """The largest input size and widest field of view of the members; mean/std/interpolation of
    the first member with that size (undone in ``forward``, so their choice does not matter)."""
    pres: list[ImagePreprocess] = [m.preprocess for m in members]  # type: ignore[misc]
    size = max(p.input_size for p in pres)
    first = next(p for p in pres if p.input_size == size)
    return ImagePreprocess(input_size=size, mean=first.mean, std=first.std, interpolation=first.interpolation,
                           crop_pct=max(p.crop_pct for p in pres))


def convert_images(x: torch.Tensor, outer: ImagePreprocess, pre: ImagePreprocess) -> torch.Tensor:
    """A batch prepared for ``outer`` (centre crop, normalised) -> the same images as ``pre`` expects."""
    if pre == outer:
        return x
    dev = x.device
    x = x.float() * torch.tensor(outer.std, device=dev).view(1, 3, 1, 1) + torch.tensor(outer.mean, device=dev).view(1, 3, 1, 1)
    side = x.shape[-1]
    crop = min(side, int(round(side * pre.crop_pct / outer.crop_pct)))
    if crop < side:
        top, left = (x.shape[-2] - crop) // 2, (side - crop) // 2
        x = x[..., top : top + crop, left : left + crop]
    if crop != pre.input_size or x.shape[-2] != pre.input_size:
        mode = "bicubic" if pre.interpolation == "bicubic" else "bilinear"
        x = nn.functional.interpolate(x, size=(pre.input_size, pre.input_size), mode=mode, align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0)
    return (x - torch.tensor(pre.mean, device=dev).view(1, 3, 1, 1)) / torch.tensor(pre.std, device=dev).view(1, 3, 1, 1)


def outer_audio_preprocess(members: list[Backbone]) -> AudioPreprocess:
    """One sample rate for every member (else an error); the longest window; the first member's
    prediction windows (each member's window is cut from the centre of this one's real part)."""
    pres: list[AudioPreprocess] = [m.preprocess for m in members]  # type: ignore[misc]
    rates = sorted({p.sample_rate for p in pres})
    if len(rates) > 1:
        raise ConfigError(f"Audio backbones {', '.join(m.name for m in members)} take different sample rates ({rates} Hz).",
                          "stack audio backbones of one sample rate.")
    longest = max(pres, key=lambda p: p.window)
    return AudioPreprocess(sample_rate=rates[0], window=longest.window, eval_windows=pres[0].eval_windows, hop=longest.hop)


def convert_audio(batch: dict[str, torch.Tensor], outer: AudioPreprocess, pre: AudioPreprocess) -> dict[str, torch.Tensor]:
    """A batch of ``outer``'s windows -> ``pre``'s shorter windows: the centre of each window's real
    part (a clip shorter than the member's window keeps its start)."""
    w = pre.window_samples
    wave, length = batch["wave"], batch["length"]
    if wave.shape[-1] <= w:
        return batch
    start = ((length.clamp(max=wave.shape[-1]) - w) // 2).clamp_min(0)
    pos = start.unsqueeze(-1) + torch.arange(w, device=wave.device)
    out = dict(batch)
    out["wave"] = torch.gather(wave, -1, pos)
    out["length"] = length.clamp(max=w)
    return out


class MemberView(Backbone):
    """Member ``i`` of a ``ConcatBackbone`` fed the concat backbone's inputs (not saved on its own:
    its recipe only keys the feature cache)."""

    source = "concat-member"

    def __init__(self, member: Backbone, outer):
        super().__init__(member.name)
        self.member = member
        self.modality = member.modality
        self.preprocess = outer
        self.num_features = member.num_features

    def forward(self, batch: Any) -> torch.Tensor:
        if self.modality == "image":
            batch = convert_images(batch, self.preprocess, self.member.preprocess)
        elif self.modality == "audio":
            batch = convert_audio(batch, self.preprocess, self.member.preprocess)
        return self.member(batch)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.member.tokenize(texts)

    def feature_points(self):
        return [(OUTPUT, None)]

    def layer_groups(self) -> list[list[str]]:
        return [[f"member.{n}" for n in g] for g in self.member.layer_groups()]

    def recipe(self) -> dict[str, Any]:
        return {"type": "concat-member", "outer": self.preprocess.to_dict(), "member": self.member.recipe()}


class ConcatBackbone(Backbone):
    source = "concat"

    def __init__(self, members: list[Backbone], normalise: bool = True, name: str | None = None):
        super().__init__(name or "+".join(m.name for m in members))
        if len(members) < 2:
            raise ConfigError(f"Stacking needs at least two backbones (got {len(members)}).",
                              "pass two or more, e.g. --backbones efficientnet_lite0,efficientnet_lite2.")
        kinds = [m.modality for m in members]
        if len(set(kinds)) > 1:
            j = next(k for k, m in enumerate(kinds) if m != kinds[0])
            raise ConfigError(f"Backbones {members[0].name!r} ({kinds[0]}) and {members[j].name!r} ({kinds[j]}) take different inputs.",
                              "stack image backbones with image backbones and text backbones with text backbones.")
        self.modality = kinds[0]
        if self.modality == "text":
            tok0 = _tokenizer(members[0])
            for m in members[1:]:
                if not _same_tokenizer(tok0, _tokenizer(m)):
                    raise ConfigError(f"Text backbones {members[0].name!r} and {m.name!r} use different tokenizers.",
                                      "stack text backbones that share one tokenizer (e.g. layers of one model).")
                if m.preprocess.max_length != members[0].preprocess.max_length:
                    raise ConfigError(f"Text backbones {members[0].name!r} and {m.name!r} have different max lengths "
                                      f"({members[0].preprocess.max_length} vs {m.preprocess.max_length}).", "pass one --max-length.")
            self.preprocess = members[0].preprocess
        elif self.modality == "audio":
            self.preprocess = outer_audio_preprocess(members)
        else:
            self.preprocess = outer_preprocess(members)
        self.members = nn.ModuleList(members)
        self.normalise = bool(normalise)
        self.dims = [int(m.num_features) for m in members]
        self.num_features = sum(self.dims)
        self.register_buffer("feat_mean", torch.zeros(self.num_features))
        self.register_buffer("feat_std", torch.ones(self.num_features))
        weight = torch.cat([torch.full((d,), 1.0 / math.sqrt(d)) for d in self.dims])
        self.register_buffer("block_weight", weight, persistent=False)  # derived from dims, not saved

    # ------------------------------------------------------------------ features
    def member_view(self, i: int) -> Backbone:
        """Member ``i`` taking this backbone's inputs; the member itself when its preprocessing is this one's."""
        m = self.members[i]
        return m if m.preprocess == self.preprocess else MemberView(m, self.preprocess)

    def slices(self) -> list[slice]:
        out, start = [], 0
        for d in self.dims:
            out.append(slice(start, start + d))
            start += d
        return out

    @torch.no_grad()
    def set_normalisation(self, features: list[torch.Tensor]) -> None:
        """Store each member's training feature mean/std (population std; 1 where a feature is constant)."""
        if [f.shape[-1] for f in features] != self.dims:
            raise ValueError(f"feature widths {[f.shape[-1] for f in features]} differ from the members' {self.dims}")
        x = torch.cat([f.double() for f in features], dim=1)
        std = x.std(dim=0, unbiased=False) if len(x) > 1 else torch.ones(self.num_features, dtype=torch.float64)
        self.feat_mean.copy_(x.mean(dim=0).float())
        self.feat_std.copy_(torch.where(std > 1e-12, std, torch.ones_like(std)).float())

    def combine(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Per-member raw features -> this backbone's output (side by side, normalised if on)."""
        x = torch.cat([f.float() for f in features], dim=-1)
        if not self.normalise:
            return x
        return (x - self.feat_mean) / self.feat_std * self.block_weight

    def forward(self, batch: Any) -> torch.Tensor:
        if self.modality == "image":
            return self.combine([m(convert_images(batch, self.preprocess, m.preprocess)) for m in self.members])
        if self.modality == "audio":
            return self.combine([m(convert_audio(batch, self.preprocess, m.preprocess)) for m in self.members])
        return self.combine([m(batch) for m in self.members])

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.members[0].tokenize(texts)

    def feature_points(self):
        return [(OUTPUT, None)]

    def layer_groups(self) -> list[list[str]]:
        """Members' groups aligned at the output: the top group holds every member's top group, and
        so on down (so the per-group learning rates and freezing treat members' depths alike)."""
        per = [[[f"members.{i}.{n}" for n in g] for g in m.layer_groups()] for i, m in enumerate(self.members)]
        depth = max(len(g) for g in per)
        out = []
        for k in range(depth):
            group = [n for groups in per if k >= depth - len(groups) for n in groups[k - (depth - len(groups))]]
            out.append(group)
        return [g for g in out if g]

    # ------------------------------------------------------------------ persistence
    def recipe(self) -> dict[str, Any]:
        return {"type": "concat", "name": self.name, "normalise": self.normalise, "members": [m.recipe() for m in self.members]}

    def save_assets(self, folder: Path) -> None:
        # each member in its own folder: two text members would otherwise both write backbone/
        for i, m in enumerate(self.members):
            m.save_assets(Path(folder) / "members" / str(i))

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], folder: Path) -> "ConcatBackbone":
        from . import backbone_from_recipe

        members = [backbone_from_recipe(r, Path(folder) / "members" / str(i)) for i, r in enumerate(recipe["members"])]
        return cls(members, normalise=bool(recipe.get("normalise", True)), name=recipe.get("name"))
