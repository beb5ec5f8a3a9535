"""The schema of a saved model's ``config.json``, checked before anything is built from it.

``check_model_config(text, path)`` parses the file with a bound on its size and nesting depth, then
validates it (pydantic, strict types: a string is never read as a number) against one model per
backbone recipe type and head kind, with bounds on every size that decides how much memory the
model takes, and the cross-field rules (as many label names as the head has outputs...). Any
problem is a ``ModelLoadError`` of one line naming the field. Unknown keys are allowed (a newer
or older version may add some); saving is unchanged.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.functional_validators import AfterValidator

from .config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from .errors import ModelLoadError

MAX_CONFIG_BYTES = 64 << 20  # config.json holds settings and metrics, never weights
MAX_DEPTH = 64  # our own configs nest about 10 deep
MAX_DIM = 1 << 20  # widest feature vector, most classes
MAX_MATRIX = 1 << 28  # largest head weight matrix (1 GiB of float32)
MAX_TEXT_LENGTH = 1 << 16
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")
TASK_TYPES = ("classification", "multilabel", "regression")


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


Finite = Annotated[float, AfterValidator(_finite)]
Dim = Annotated[int, Field(ge=1, le=MAX_DIM)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
Name = Annotated[str, Field(max_length=4096)]


class _Model(BaseModel):
    # strict: "5" is not 5 and "abc" is not a list; extra keys are kept (other versions may add some)
    model_config = ConfigDict(strict=True, extra="allow")


# ---------------------------------------------------------------------------- preprocessing
class ImagePre(_Model):
    kind: Literal["image"]
    input_size: Annotated[int, Field(ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE)]
    mean: Annotated[list[Finite], Field(min_length=3, max_length=3)]
    std: Annotated[list[Annotated[Finite, Field(gt=0)]], Field(min_length=3, max_length=3)]
    interpolation: Literal[INTERPOLATIONS]  # type: ignore[valid-type]
    crop_pct: Annotated[Finite, Field(ge=0.25, le=2.0)]


class TextPre(_Model):
    kind: Literal["text"]
    max_length: Annotated[int, Field(ge=2, le=MAX_TEXT_LENGTH)]
    pooling: Literal["mean", "cls"]


class AudioPre(_Model):
    kind: Literal["audio"]
    sample_rate: Annotated[int, Field(ge=1000, le=384_000)]
    window: Annotated[Finite, Field(ge=0.01, le=600)]
    eval_windows: Literal["center", "sliding"]
    hop: Annotated[Finite, Field(ge=0.001, le=600)]


Preprocess = Annotated[Union[ImagePre, TextPre, AudioPre], Field(discriminator="kind")]


# ---------------------------------------------------------------------------- backbone recipes
class TimmRecipe(_Model):
    type: Literal["timm"]
    arch: Annotated[str, Field(min_length=1, max_length=200)]
    name: Name | None = None
    preprocess: ImagePre


class HFRecipe(_Model):
    type: Literal["hf"]
    name: Name | None = None
    preprocess: TextPre


class ClipRecipe(_Model):
    type: Literal["clip"]
    name: Name | None = None
    preprocess: ImagePre


class CrepeRecipe(_Model):
    type: Literal["crepe"]
    name: Name | None = None
    capacity: Literal["tiny", "full"]
    frame_hop: Annotated[Finite, Field(gt=0, le=10)] = 0.1
    preprocess: AudioPre


class GE2ERecipe(_Model):
    type: Literal["ge2e"]
    name: Name | None = None
    preprocess: AudioPre


class HFAudioRecipe(_Model):
    type: Literal["hf-audio"]
    name: Name | None = None
    preprocess: AudioPre


class AudioCNNRecipe(_Model):
    type: Literal["audio_cnn"]
    name: Name | None = None
    preprocess: AudioPre


class CutRecipe(_Model):
    type: Literal["cut"]
    layer: Annotated[str, Field(min_length=1, max_length=200)]
    name: Name | None = None
    inner: "Recipe"


class ConcatRecipe(_Model):
    type: Literal["concat"]
    name: Name | None = None
    normalise: bool = True
    members: Annotated[list["Recipe"], Field(min_length=2, max_length=64)]


class BaseId(_Model):
    backbone: Annotated[str, Field(min_length=1, max_length=4096)]
    backbone_weights: Name | None = None
    image_size: Annotated[int, Field(ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE)] | None = None
    pooling: Literal["mean", "cls"] | None = None
    max_length: Annotated[int, Field(ge=2, le=MAX_TEXT_LENGTH)] | None = None


class LoraSettings(_Model):
    r: Annotated[int, Field(ge=1, le=4096)]
    alpha: Annotated[Finite, Field(gt=0)]
    dropout: Fraction
    targets: Name | None = None
    target_modules: Annotated[list[Name], Field(min_length=1, max_length=100_000)]


class LoraRecipe(_Model):
    type: Literal["lora"]
    name: Name | None = None
    base: "Recipe"
    base_id: BaseId
    base_digest: Annotated[str, Field(max_length=128)] | None = None
    lora: LoraSettings
    preprocess: Preprocess


Recipe = Annotated[Union[TimmRecipe, HFRecipe, ClipRecipe, CrepeRecipe, GE2ERecipe, HFAudioRecipe, AudioCNNRecipe, CutRecipe, ConcatRecipe,
                          LoraRecipe], Field(discriminator="type")]
for _cls in (CutRecipe, ConcatRecipe, LoraRecipe):
    _cls.model_rebuild()


# ---------------------------------------------------------------------------- heads
def _matrix(rows: int, cols: int, what: str) -> None:
    if rows * cols > MAX_MATRIX:
        raise ValueError(f"{what} would be a {rows} x {cols} matrix, more than {MAX_MATRIX:,} weights")


class _Head(_Model):
    in_: Dim = Field(alias="in")
    out: Dim


class LinearHead(_Head):
    kind: Literal["linear"]
    dropout: Fraction = 0.0
    hidden: Dim = 512  # unused by a linear head

    @model_validator(mode="after")
    def _size(self):
        _matrix(self.in_, self.out, "the head")
        return self


class MlpHead(_Head):
    kind: Literal["mlp"]
    dropout: Fraction = 0.0
    hidden: Dim = 512

    @model_validator(mode="after")
    def _size(self):
        _matrix(self.in_, self.hidden, "the head's hidden layer")
        _matrix(self.hidden, self.out, "the head's output layer")
        return self


class PrototypeHead(_Head):
    kind: Literal["prototype"]
    dim: Dim | None = None
    metric: Literal["cosine", "euclidean"] = "cosine"
    project: bool = False

    @model_validator(mode="after")
    def _size(self):
        _matrix(self.out, self.dim or self.in_, "the class vectors")
        if self.project:
            _matrix(self.in_, self.dim or self.in_, "the projection")
        return self


class StackHead(_Head):
    kind: Literal["stack"]
    dims: Annotated[list[Dim], Field(min_length=2, max_length=64)]

    @model_validator(mode="after")
    def _size(self):
        if sum(self.dims) != self.in_:
            raise ValueError(f"dims {self.dims} add up to {sum(self.dims)}, not to in = {self.in_}")
        for d in self.dims:
            _matrix(d, self.out, "a member's probe")
        return self


class TaskSpec(_Model):
    name: Name
    task: Literal[TASK_TYPES]  # type: ignore[valid-type]
    label_names: Annotated[list[Name], Field(min_length=1, max_length=MAX_DIM)]


class MultitaskHead(_Head):
    kind: Literal["multitask"]
    dropout: Fraction = 0.0
    tasks: Annotated[list[TaskSpec], Field(min_length=1, max_length=1024)]
    weighting: Literal["uncertainty", "fixed"] = "uncertainty"
    weights: list[Annotated[Finite, Field(ge=0)]] | None = None
    label_smoothing: Fraction = 0.0

    @model_validator(mode="after")
    def _size(self):
        widths = [1 if t.task == "regression" else len(t.label_names) for t in self.tasks]
        if sum(widths) != self.out:
            raise ValueError(f"the tasks have {sum(widths)} outputs together, not out = {self.out}")
        if self.weights is not None and len(self.weights) != len(self.tasks):
            raise ValueError(f"{len(self.weights)} weights for {len(self.tasks)} tasks")
        for w in widths:
            _matrix(self.in_, w, "a task's head")
        return self


Head = Annotated[Union[LinearHead, MlpHead, PrototypeHead, StackHead, MultitaskHead], Field(discriminator="kind")]


# ---------------------------------------------------------------------------- the whole file
class ModelConfig(_Model):
    format_version: Annotated[int, Field(ge=0)]
    transferkit_version: Annotated[str, Field(max_length=100)] | None = None
    backbone: Recipe
    head: Head
    task: Literal["classification", "multilabel", "regression", "multitask"]
    label_names: Annotated[list[Name], Field(max_length=MAX_DIM)]
    strategy: Annotated[str, Field(max_length=200)]
    info: dict[str, Any] = Field(default_factory=dict)
    checksums: dict[str, Annotated[str, Field(max_length=128)]] = Field(default_factory=dict)


def _consistent(m: ModelConfig) -> tuple[str, str] | None:
    """(field, problem) for the first rule across fields that ``m`` breaks, else None."""
    names, head = m.label_names, m.head
    if len(set(names)) != len(names):
        return "label_names", f"lists {next(n for i, n in enumerate(names) if n in names[:i])!r} twice"
    if (m.task == "multitask") != (head.kind == "multitask"):
        return "task", f"{m.task!r} does not go with a {head.kind!r} head"
    if m.task == "multitask":
        if names != [t.name for t in head.tasks]:
            return "label_names", "must list the names of head.tasks, in order"
    elif m.task == "regression":
        if head.out != 1:
            return "head.out", f"a regression head has 1 output, not {head.out}"
    elif len(names) != head.out:
        return "label_names", f"has {len(names)} names for the head's {head.out} outputs"
    return None


def json_depth(text: str) -> int:
    """How deeply JSON ``text`` nests arrays and objects (strings skipped), without parsing it."""
    depth = deepest = 0
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        c = m.group()
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def _field(loc: tuple, data: Any) -> str:
    """A pydantic error location as the JSON path a reader finds in the file (union tags dropped)."""
    parts, cur, tagged = [], data, False
    for key in loc:
        if isinstance(cur, list) and isinstance(key, int):
            parts.append(f"[{key}]")
            cur, tagged = (cur[key] if 0 <= key < len(cur) else None), False
            continue
        if isinstance(cur, dict) and not tagged and key in (cur.get("type"), cur.get("kind")):
            tagged = True  # the tag of a tagged union, which pydantic puts before the object's own fields
            continue
        name = "in" if key == "in_" else str(key)
        parts.append(name)
        cur, tagged = (cur.get(name) if isinstance(cur, dict) else None), False
    return ".".join(parts).replace(".[", "[") or "(top level)"


def read_model_config(path: Path) -> dict[str, Any]:
    """Read and parse ``config.json`` (bounded size and depth); raises ``ModelLoadError``."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ModelLoadError(f"{path} is {size / 2**20:,.0f} MiB, far too large for a model config.", "restore config.json from the saved model.")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelLoadError(f"{path} is not UTF-8 text.", "restore config.json from the saved model.") from None
    except OSError as e:
        raise ModelLoadError(f"Cannot read {path} ({e.strerror or e}).", "check the model folder's permissions.") from None
    depth = json_depth(text)
    if depth > MAX_DEPTH:
        raise ModelLoadError(f"{path} nests {depth} levels deep (a model config nests at most {MAX_DEPTH}).", "restore config.json from the saved model.")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path} is not valid JSON ({e.msg}).", "re-save the model.") from None
    except RecursionError:  # pragma: no cover - the depth bound comes first
        raise ModelLoadError(f"{path} nests too deeply.", "restore config.json from the saved model.") from None
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object.", "restore config.json from the saved model.")
    return cfg


def check_model_config(cfg: dict[str, Any], path: Path) -> ModelConfig:
    """Validate a parsed ``config.json``; the first problem is a one-line ``ModelLoadError`` naming its field."""
    fix = "restore config.json from the saved model, or re-save the model."
    try:
        m = ModelConfig.model_validate(cfg)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = _field(tuple(err["loc"]), cfg)
        tag = err["type"] in ("union_tag_invalid", "union_tag_not_found")
        if tag:
            where += "." + str(err.get("ctx", {}).get("discriminator", "")).strip("'")
        msg = err["msg"].removeprefix("Value error, ")
        shown = "" if tag or err["type"] in ("missing", "value_error") else f" (got {_short(err.get('input'))})"
        raise ModelLoadError(f"{path}: field {where}: {msg}{shown}.", fix) from None
    broken = _consistent(m)
    if broken is not None:
        raise ModelLoadError(f"{path}: field {broken[0]}: {broken[1]}.", fix)
    return m


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:39] + "…"
