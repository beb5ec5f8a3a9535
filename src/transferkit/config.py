"""Typed configuration, validated once, serialisable to JSON."""

from __future__ import annotations

import functools
import math
import numbers
import os
import typing
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: the largest ``--image-size``: one 2048 px image already takes 14 MB decoded (at crop 0.875)
MAX_IMAGE_SIZE = 2048
MIN_IMAGE_SIZE = 16
SEED_MAX = 2**32 - 1  # numpy's seed range


def option(name: str) -> str:
    """The CLI spelling of a config field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def check_image_size(value: int | None, name: str = "--image-size") -> None:
    """``value`` in pixels, or None (the weights' own size)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be a whole number of pixels (got {value!r}).", "pass e.g. 224.")
    if not MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE:
        raise ConfigError(f"{name} {value} is outside {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} pixels.",
                          f"pass a size in that range (the weights' own, e.g. 224, when unsure).")


def check_int(value: Any, name: str, low: int | None = 1, high: int | None = None) -> None:
    """``value`` is a whole number in ``[low, high]`` (a bound of None: open)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be a whole number (got {value!r}).", "pass e.g. 1.")
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"at least {low}" if high is None else f"at most {high}" if low is None else f"in {low}..{high}"
        raise ConfigError(f"{name} must be {span} (got {value}).", f"pass a value {span}.")


def check_float(value: Any, name: str) -> None:
    """``value`` is a finite real number (no NaN, no infinity)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number (got {value!r}).", "pass e.g. 0.001.")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number (got {value}).", "pass a finite value such as 0.001.")


@functools.cache
def _field_types(cls: type) -> dict[str, tuple[type, bool]]:
    """Per field: (its base type, whether None is allowed)."""
    out = {}
    for name, ann in typing.get_type_hints(cls).items():
        args = typing.get_args(ann)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), ann) if args else ann
        out[name] = (base, optional)
    return out


def check_field_types(obj: Any) -> None:
    """Every field of a config dataclass has its declared type: whole numbers for ``int``, finite
    numbers for ``float`` (NaN and infinity are refused), ``True``/``False`` for ``bool``."""
    for name, (base, optional) in _field_types(type(obj)).items():
        value = getattr(obj, name)
        if value is None and optional:
            continue
        if base is float:
            check_float(value, option(name))
        elif base is int:
            check_int(value, option(name), low=None)
        elif base is bool and not isinstance(value, bool):
            raise ConfigError(f"{option(name)} must be true or false (got {value!r}).", f"pass {option(name)} or --no-{option(name)[2:]}.")
        elif base is str and isinstance(value, os.PathLike):
            setattr(obj, name, os.fspath(value))  # a Path given from Python
        elif base is str and not isinstance(value, str):
            raise ConfigError(f"{option(name)} must be text (got {value!r}).", "pass a string.")

_CHOICES = {
    "schedule": ("cosine", "onecycle"),
    "unfreeze": ("none", "gradual"),
    "head": ("logistic", "linear", "mlp"),
    "head_init": ("random", "probe"),
    "pooling": ("mean", "cls"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "on_bad_sample": ("error", "skip"),
    "on_nan": ("stop", "skip"),
    "stack": ("concat", "oof"),
    "mt_weighting": ("uncertainty", "fixed"),
    "audio_eval": ("center", "sliding"),
}


@dataclass
class FitConfig:
    """Everything a training run needs besides the data. CLI options have the same names."""

    backbone: str = "efficientnet_lite0"
    strategy: str = "finetune"
    backbone_weights: str | None = None
    layer: str | None = None  # cut the backbone after this feature point ('transferkit rank --layers' names them)
    backbones: str | None = None  # stack: comma-separated members, a cut layer as name@layer (minilm,minilm@encoder.layer.3)
    stack: str = "concat"  # stack: "concat" (one head on the side-by-side features) | "oof" (out-of-fold meta-learner)
    stack_folds: int = 5  # stack: cross-validation folds (oof predictions; C chosen without a validation set)
    image_size: int | None = None  # None: the weights' own input size
    pooling: str = "mean"  # text backbones
    max_length: int | None = None  # text backbones
    audio_window: float | None = None  # audio backbones: window length in seconds (None: the weights' own)
    audio_eval: str = "center"  # audio backbones, prediction: the centre window, or "sliding" windows averaged
    head: str = "logistic"  # linear-probe: logistic (sklearn) | linear | mlp; finetune: linear | mlp
    head_init: str = "random"  # finetune: "probe" starts from a linear probe's head (LP-FT)
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-3  # head learning rate (measured on the emoji task: 3e-3 beat 1e-3 by 4 points)
    backbone_lr_ratio: float = 0.1  # top backbone group lr = lr * ratio
    layer_decay: float = 0.8  # each earlier group's lr = next group's lr * layer_decay
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of steps
    schedule: str = "cosine"
    dropout: float = 0.1
    label_smoothing: float = 0.1
    freeze: int = 0  # first N layer groups stay frozen
    unfreeze: str = "none"  # "gradual": head first, then one more group per stage
    unfreeze_every: int = 1  # epochs per gradual-unfreezing stage
    patience: int = 5  # early stopping on the validation metric
    augment: bool = True
    hflip: bool = True
    seed: int = 0  # training randomness (init of the head, data order, augmentation)
    split_seed: int = 0  # the train/val/test split, fixed across training seeds
    device: str = "auto"
    compile: bool = False  # torch.compile the model for training (worth it for long GPU runs; the first steps compile)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    eval_batch_size: int = 128
    on_bad_sample: str = "error"  # unreadable images/empty texts: "error" before training starts, or "skip" them
    max_bad_fraction: float = 0.05  # with skip: abort when more than this fraction of a split is bad
    checkpoint_every: str | None = None  # "N" or "Nepochs" / "Nsteps": write a resumable checkpoint
    keep_checkpoints: int = 2  # newest complete checkpoints kept
    on_nan: str = "stop"  # non-finite loss/gradients: "stop" (report step) or "skip" the step
    mt_weighting: str = "uncertainty"  # multitask: learned uncertainty weights (Kendall et al. 2018) or "fixed"
    mt_weights: str | None = None  # multitask, fixed weighting: "category=1,subcategory=0.5" (default 1 each)
    lora_r: int = 8  # lora: adapter rank
    lora_alpha: float = 16.0  # lora: scaling numerator (updates are scaled by alpha / r)
    lora_dropout: float = 0.0  # lora: dropout on the adapter input
    lora_targets: str | None = None  # lora: regex over layer names; default q/v projections (text), 1x1 convs + linear (timm)

    def __post_init__(self) -> None:
        if isinstance(self.checkpoint_every, int) and not isinstance(self.checkpoint_every, bool):
            self.checkpoint_every = str(self.checkpoint_every)  # checkpoint_every=2 from Python: epochs
        check_field_types(self)
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ConfigError(f"Invalid --{name.replace('_', '-')} {value!r}.", f"use one of: {', '.join(choices)}.")
        positive = ("epochs", "batch_size", "lr", "unfreeze_every", "eval_batch_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive (got {getattr(self, name)}).", "pass a value > 0.")
        if self.freeze < 0:
            raise ConfigError(f"--freeze must be >= 0 (got {self.freeze}).", "pass the number of layer groups to keep frozen.")
        if self.audio_window is not None and not 0.1 <= self.audio_window <= 60:
            raise ConfigError(f"--audio-window {self.audio_window:g} is outside 0.1..60 seconds.", "pass a window in seconds, e.g. 1.0.")
        check_image_size(self.image_size)
        for name in ("seed", "split_seed"):
            check_int(getattr(self, name), option(name), 0, SEED_MAX)
        if self.patience < 0:
            raise ConfigError(f"--patience must be >= 0 (got {self.patience}).", "pass 0 (no early stopping) or more epochs.")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0 (got {self.weight_decay}).", "pass e.g. 0.01.")
        for name in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{option(name)} must be in [0, 1) (got {getattr(self, name)}).", "pass a fraction such as 0.15.")
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(f"--val-fraction {self.val_fraction} and --test-fraction {self.test_fraction} leave nothing to train on.",
                              "make their sum below 1 (default 0.15 each).")
        for name in ("dropout", "label_smoothing", "warmup"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1).", "pass a fraction.")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ConfigError(f"--max-bad-fraction must be in [0, 1] (got {self.max_bad_fraction}).", "pass a fraction.")
        if self.backbones is not None and len([b for b in str(self.backbones).split(",") if b.strip()]) < 2:
            raise ConfigError(f"--backbones {self.backbones!r} names fewer than two backbones.", "pass two or more, comma-separated.")
        if self.stack_folds < 2:
            raise ConfigError(f"--stack-folds must be at least 2 (got {self.stack_folds}).", "pass 2 or more (default 5).")
        if self.keep_checkpoints < 1:
            raise ConfigError("--keep-checkpoints must be at least 1.", "pass 1 or more.")
        if self.checkpoint_every is not None:
            self.checkpoint_interval()  # validates the spelling
        if not 0 < self.layer_decay <= 1 or not 0 < self.backbone_lr_ratio <= 10:
            raise ConfigError("--layer-decay must be in (0, 1] and --backbone-lr-ratio in (0, 10].", "pass values in range.")
        if isinstance(self.lora_r, bool) or int(self.lora_r) != self.lora_r or self.lora_r < 1:
            raise ConfigError(f"--lora-r must be a positive integer (got {self.lora_r}).", "pass a rank such as 8.")
        if not self.lora_alpha > 0:
            raise ConfigError(f"--lora-alpha must be positive (got {self.lora_alpha}).", "pass e.g. 16 (twice the rank).")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"--lora-dropout must be in [0, 1) (got {self.lora_dropout}).", "pass a fraction such as 0.1.")
        if self.lora_targets is not None:
            import re

            try:
                re.compile(self.lora_targets)
            except re.error as e:
                raise ConfigError(f"Invalid --lora-targets {self.lora_targets!r}: not a regular expression ({e}).",
                                  "pass e.g. 'query|value' or 'conv_pw'.") from None

    def checkpoint_interval(self) -> tuple[int, str] | None:
        """``checkpoint_every`` parsed as (N, "epoch" | "step"); a bare number means epochs."""
        if self.checkpoint_every is None:
            return None
        import re

        m = re.fullmatch(r"\s*(\d+)\s*(epochs?|steps?)?\s*", str(self.checkpoint_every))
        if not m or int(m.group(1)) < 1:
            raise ConfigError(f"Invalid --checkpoint-every {self.checkpoint_every!r}.", "use e.g. 1, 2epochs or 500steps.")
        return int(m.group(1)), "step" if (m.group(2) or "").startswith("step") else "epoch"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FitConfig":
        """Build from a dict; unknown keys (from an older/newer version) are dropped with a warning."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            warnings.warn(f"ignoring unknown config keys: {', '.join(unknown)}", stacklevel=2)
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes: Any) -> "FitConfig":
        return FitConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_file(cls, path: str | Path) -> "FitConfig":
        """From a JSON/YAML file of fields, or a saved run (``report.json``, a model's ``config.json``,
        or their folder); see ``read_config_file``."""
        return cls(**read_config_file(path, (cls,))[cls])


SELECTIONS = ("snd", "source-val", "last")


@dataclass
class AdaptConfig:
    """Options of ``transferkit adapt`` besides the ``FitConfig`` ones (same names on the CLI)."""

    # one method or several joined by "+"; "auto": adabn+self-training for backbones with BatchNorm,
    # self-training otherwise (the best of 8 combinations measured on emoji google -> twitter)
    method: str = "auto"
    select: str = "last"  # model selection without target labels: last (fixed schedule) | source-val | snd
    adapt_weight: float = 1.0  # weight of the DANN / CORAL loss
    threshold: float = 0.9  # self-training: confidence above which a pseudo-label is always taken
    class_fraction: float = 0.5  # self-training: at least this top fraction of each predicted class is taken
    pseudo_weight: float = 1.0  # self-training: weight of the pseudo-label loss
    pseudo_start: float = 0.3  # self-training: fraction of epochs trained on the source before pseudo-labels
    discriminator_hidden: int = 1024  # DANN: width of the domain classifier

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.select not in SELECTIONS:
            raise ConfigError(f"Invalid --select {self.select!r}.", f"use one of: {', '.join(SELECTIONS)}.")
        for name in ("threshold", "class_fraction", "pseudo_start"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1] (got {getattr(self, name)}).", "pass a fraction.")
        for name in ("adapt_weight", "pseudo_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0.", "pass a non-negative weight.")
        if self.discriminator_hidden < 1:
            raise ConfigError("--discriminator-hidden must be positive.", "pass a width such as 1024.")
        if not all(p.strip() for p in str(self.method).split("+")):
            raise ConfigError(f"Invalid --method {self.method!r}.", "join method names with '+', e.g. adabn+dann.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AdaptConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes: Any) -> "AdaptConfig":
        return AdaptConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_file(cls, path: str | Path) -> "AdaptConfig":
        """The adaptation fields of a JSON/YAML file that holds both kinds (``adapt --config``), or of a saved adapt run."""
        return cls(**read_config_file(path, (FitConfig, cls))[cls])


def read_config_file(path: str | Path, classes: tuple[type, ...] = (FitConfig,)) -> dict[type, dict[str, Any]]:
    """The fields of each config class in ``classes`` from a file, checked: ``{cls: {field: value}}``.

    - A JSON or YAML mapping of field names (``-`` or ``_``): every key must be a field of one of
      ``classes``, and every value of the field's type, else ``ConfigError`` naming the key and file.
    - A saved run: a ``report.json`` (``fit_config``, for adapt also ``adapt_config``), a model's
      ``config.json`` (``info.fit_config``), or the run/model folder itself. Keys this version does
      not know are dropped with a warning (an older run), as in ``from_dict``.

    Floats written like ``3e-3`` (a string to YAML 1.1) are read as numbers, and a whole number
    where a string is expected as its digits (``checkpoint_every: 1``)."""
    import json
    import typing

    path = Path(path)
    if path.is_dir():  # a run folder or a model folder
        path = next((f for f in (path / "report.json", path / "config.json", path / "model" / "config.json") if f.is_file()), path / "report.json")
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.", "pass a JSON or YAML file of options, or a run's report.json.")
    text = path.read_text(encoding="utf-8-sig")
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)  # JSON is YAML too
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError
        msg = " ".join(str(e).split())
        raise ConfigError(f"Config file {path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} ({msg}).",
                          "fix the syntax.") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"Config file {path} holds a {type(doc).__name__}, not a mapping of option names to values.",
                          "write one 'name: value' per line (YAML) or a JSON object.")
    saved = doc.get("info") if isinstance(doc.get("info"), dict) and "fit_config" in doc["info"] else doc
    sections: dict[type, dict[str, Any]]
    if isinstance(saved.get("fit_config"), dict):  # a saved run
        adapt = saved.get("adapt_config") or (saved.get("adaptation_report") or {}).get("adapt_config") or {}
        sections = {FitConfig: saved["fit_config"], AdaptConfig: adapt}
        sections = {cls: sections.get(cls, {}) for cls in classes}
        for cls, values in sections.items():
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(values) - known)
            if unknown:
                warnings.warn(f"{path}: ignoring unknown config keys: {', '.join(unknown)}", stacklevel=2)
            sections[cls] = {k: v for k, v in values.items() if k in known}
    else:
        sections = {cls: {} for cls in classes}
        owner = {f.name: cls for cls in reversed(classes) for f in fields(cls)}
        for key, value in doc.items():
            name = str(key).replace("-", "_")
            if name not in owner:
                what = " or ".join(c.__name__ for c in classes)
                raise ConfigError(f"Config file {path}: unknown key {key!r} (not a {what} field).",
                                  "remove it or fix its spelling (the keys are the command's option names, see --help).")
            sections[owner[name]][name] = value
    for cls, values in sections.items():
        hints = typing.get_type_hints(cls)
        for key in list(values):
            values[key] = _typed(hints[key], values[key], key, path)
    return sections


def _typed(ann: Any, value: Any, key: str, path: Path) -> Any:
    """``value`` checked against the field's annotation (``int``, ``float``, ``bool``, ``str``, or one of them ``| None``)."""
    import typing

    args = typing.get_args(ann)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), ann) if args else ann
    ok, out = False, value
    if value is None:
        ok = optional
    elif base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        if isinstance(value, str):
            try:
                out, ok = float(value), True
            except ValueError:
                ok = False
        else:
            ok, out = isinstance(value, (int, float)) and not isinstance(value, bool), float(value) if isinstance(value, (int, float)) else value
    elif base is str:
        ok = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
        out = str(value) if ok else value
    if not ok:
        want = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(base, str(base))
        raise ConfigError(f"Config file {path}: {key} must be {want}{' or null' if optional else ''} (got {value!r}).",
                          "fix the value in the file.")
    return out
