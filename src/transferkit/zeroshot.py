"""Zero-shot classification: classes known only by their names, descriptions or attributes.

Every zero-shot model here is a ``TransferModel`` with a prototype head whose class vectors live in
a semantic space, so it predicts, saves, loads and takes ``add_support`` like any other model:

- **text encoder** (``minilm``, any HF sentence encoder): texts and label names/descriptions are
  embedded by the same encoder; a text goes to the label it is most similar to (cosine).
- **image-text model** (``clip/<name>``, a CLIP folder): images by the vision tower, prompts
  ("a photo of a {}.") by the text tower; several templates are averaged (prompt ensembling).
- **semantic mapping** for any image backbone: on labelled *seen* classes, learn a linear map from
  image features to the class vectors (label embeddings from a text encoder, or attribute rows
  from a CSV); unseen classes are then recognised by their nearest class vector. In the
  generalised setting (seen and unseen classes as candidates) a calibration term ``gamma`` is
  subtracted from seen-class scores (calibrated stacking, Chao et al. 2016) so they do not
  swallow every prediction; ``calibration="auto"`` picks it on a split of the seen classes.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, DataError

TEXT_TEMPLATES = ("{}",)
IMAGE_TEMPLATES = ("a photo of a {}.", "a drawing of a {}.", "an icon of a {}.", "a {}.")


# ------------------------------------------------------------------ labels, descriptions, attributes
def read_labels(labels: str | Sequence[str] | None = None, labels_file: str | Path | None = None) -> tuple[list[str], dict[str, str]]:
    """Label names (and optional descriptions) from ``"cat,dog"``/a list, or a file with one label
    per line, ``name: description`` lines, or a CSV with ``label`` and ``description`` columns."""
    if (labels is None) == (labels_file is None):
        raise ConfigError("Give the candidate labels with exactly one of --labels or --labels-file.",
                          'e.g. --labels "cat,dog" or --labels-file labels.txt (one per line, optionally "name: description").')
    descriptions: dict[str, str] = {}
    if labels_file is not None:
        path = Path(labels_file)
        if not path.is_file():
            raise DataError(f"Labels file {path} does not exist.", "pass a text file with one label per line.")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise DataError(f"Labels file {path} is not UTF-8 text.", "save it as UTF-8, one label per line.") from None
        if path.suffix.lower() in (".csv", ".tsv"):
            from .data.dataset import _read_rows

            rows = _read_rows(path)  # duplicate columns, over-long fields: one clear line
            if not rows or "label" not in rows[0]:
                raise DataError(f"{path} has no 'label' column.", "give a header 'label,description' (description optional).")
            names = [(r.get("label") or "").strip() for r in rows]
            descriptions = {(r.get("label") or "").strip(): (r.get("description") or "").strip() for r in rows
                            if (r.get("description") or "").strip()}
        else:
            names = []
            for line in text.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                name, _, desc = line.partition(":")
                names.append(name.strip())
                if desc.strip():
                    descriptions[name.strip()] = desc.strip()
        where = str(path)
    else:
        names = [x.strip() for x in (labels.split(",") if isinstance(labels, str) else labels)]
        where = "--labels"
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"{where} gives no labels.", 'list at least one label, e.g. --labels "cat,dog".')
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{where} lists {dupes[0]!r} more than once.", "give each label once.")
    return names, descriptions


def read_attributes(path: str | Path, names: Sequence[str]) -> torch.Tensor:
    """Attribute vectors ``[len(names), A]`` from a CSV: a ``class``/``label`` column, then one
    numeric column per attribute; every class in ``names`` needs a row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Attributes file {path} does not exist.", "pass a CSV with a 'class' column and one column per attribute.")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise DataError(f"Attributes file {path} is not UTF-8 text.", "save it as UTF-8 CSV.") from None
    except csv.Error as e:
        raise DataError(f"Attributes file {path} cannot be read as CSV ({e}).", "fix the quoting or remove NUL bytes.") from None
    if len(rows) < 2 or len(rows[0]) < 2:
        raise DataError(f"{path} has no attribute columns.", "header: class,attr1,attr2,... then one row per class.")
    header, body = rows[0], rows[1:]
    table: dict[str, list[float]] = {}
    for i, row in enumerate(body, start=2):
        if not row or not row[0].strip():
            continue
        try:
            table[row[0].strip()] = [float(v) for v in row[1:]]
        except ValueError:
            raise DataError(f"{path} line {i}: attribute values must be numbers.", "use numbers (e.g. 0/1 or scores) in every attribute column.") from None
        if len(table[row[0].strip()]) != len(header) - 1:
            raise DataError(f"{path} line {i} has {len(row) - 1} values for {len(header) - 1} attributes.", "give one value per attribute column.")
    missing = [n for n in names if n not in table]
    if missing:
        raise DataError(f"{path} has no attribute row for class {missing[0]!r}" + (f" (and {len(missing) - 1} more)." if len(missing) > 1 else "."),
                        "add one row per class, named as in the labels.")
    return torch.tensor([table[n] for n in names], dtype=torch.float32)


# ------------------------------------------------------------------ class vectors from a text encoder
def encode_texts(encoder, texts: list[str], device: str | torch.device = "auto") -> torch.Tensor:
    """Embeddings of ``texts`` by a text backbone, or by the text tower of an image-text backbone."""
    if hasattr(encoder, "encode_texts"):
        from .inputs import resolve_device

        return encoder.encode_texts(texts, device=resolve_device(device) if isinstance(device, str) else device)
    if encoder.modality != "text":
        raise ConfigError(f"{encoder.name} cannot embed label texts (an image backbone without a text tower).",
                          "use a text encoder (--text-encoder minilm), an image-text backbone (clip/<name>), or --attributes.")
    from .features import compute_features

    return compute_features(encoder, texts, device=device)


def label_vectors(encoder, names: Sequence[str], descriptions: dict[str, str] | None = None,
                  templates: Sequence[str] | None = None, device: str | torch.device = "auto") -> torch.Tensor:
    """One unit vector per class: the mean of the normalised embeddings of its prompts (each template
    filled with the name), plus its description if one is given."""
    if isinstance(templates, str):
        templates = (templates,)
    templates = tuple(templates or (IMAGE_TEMPLATES if hasattr(encoder, "encode_texts") else TEXT_TEMPLATES))
    if any("{}" not in t for t in templates):
        raise ConfigError(f"Template {next(t for t in templates if '{}' not in t)!r} has no '{{}}' for the label.", 'write e.g. "a photo of a {}."')
    prompts, owner = [], []
    for i, n in enumerate(names):
        for t in templates:
            prompts.append(t.format(n))
            owner.append(i)
        if descriptions and descriptions.get(n):
            prompts.append(descriptions[n])
            owner.append(i)
    z = nn.functional.normalize(encode_texts(encoder, prompts, device).float(), dim=-1)
    sums = torch.zeros(len(names), z.shape[1]).index_add_(0, torch.tensor(owner), z)
    return nn.functional.normalize(sums, dim=-1)


# ------------------------------------------------------------------ semantic mapping (seen -> unseen)
def fit_mapping(features: torch.Tensor, labels: torch.Tensor, class_vectors: torch.Tensor, *, steps: int = 300, lr: float = 1e-2,
                weight_decay: float = 1e-3, scale: float = 10.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Learn ``W`` so ``normalize(W (x - mean))`` is nearest its class vector: softmax cross-entropy
    over the seen classes' vectors (full batch, AdamW). Returns ``(W [S, D], mean [D])``."""
    g = torch.Generator().manual_seed(seed)
    mean = features.mean(0)
    x = features.float() - mean
    v = nn.functional.normalize(class_vectors.float(), dim=-1)
    w = nn.Parameter(torch.randn(v.shape[1], x.shape[1], generator=g) / x.shape[1] ** 0.5)
    from .training.optim import adamw

    opt = adamw([{"params": [w], "weight_decay": weight_decay}], lr)
    for _ in range(steps):
        logits = scale * nn.functional.normalize(x @ w.T, dim=-1) @ v.T
        loss = nn.functional.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach(), mean


def mapped_scores(features: torch.Tensor, w: torch.Tensor, mean: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize((features.float() - mean) @ w.T, dim=-1) @ nn.functional.normalize(class_vectors.float(), dim=-1).T


def harmonic_mean(seen: float, unseen: float) -> float:
    return 2 * seen * unseen / (seen + unseen) if seen + unseen > 0 else 0.0


def gzsl_accuracies(scores: torch.Tensor, y: torch.Tensor, seen_mask: torch.Tensor, gamma: float) -> dict[str, float]:
    """Generalised zero-shot: per-class-averaged accuracy on seen-class and unseen-class items with
    all classes as candidates and ``gamma`` subtracted from seen-class scores, and their harmonic mean."""
    pred = (scores - gamma * seen_mask.float()).argmax(1)

    def per_class(mask_items):
        classes = torch.unique(y[mask_items])
        return float(np.mean([float((pred[y == c] == c).float().mean()) for c in classes])) if len(classes) else 0.0

    s, u = per_class(seen_mask[y]), per_class(~seen_mask[y])
    return {"seen": s, "unseen": u, "harmonic": harmonic_mean(s, u), "gamma": gamma}


def choose_gamma(features: torch.Tensor, labels: torch.Tensor, class_vectors: torch.Tensor, *, fraction: float = 0.25,
                 seed: int = 0, **fit_kw: Any) -> float:
    """Calibration for the generalised setting without touching unseen classes: hold out a
    ``fraction`` of the seen classes as stand-in unseen ones (and a fifth of the other items), fit
    the mapping on the rest, and take the ``gamma`` with the best harmonic mean there."""
    rng = np.random.default_rng(seed)
    classes = torch.unique(labels).numpy()
    if len(classes) < 4:
        return 0.0
    fake_unseen = torch.as_tensor(rng.choice(classes, max(1, int(round(fraction * len(classes)))), replace=False))
    is_fake = torch.isin(labels, fake_unseen)
    held = torch.as_tensor(rng.random(len(labels)) < 0.2) & ~is_fake
    train = ~is_fake & ~held
    remap = torch.full((int(class_vectors.shape[0]),), -1, dtype=torch.long)
    train_classes = torch.unique(labels[train])
    remap[train_classes] = torch.arange(len(train_classes))
    w, mean = fit_mapping(features[train], remap[labels[train]], class_vectors[train_classes], seed=seed, **fit_kw)
    present = torch.unique(labels)  # candidates: the training classes and the stand-in unseen ones
    sc = mapped_scores(features[held | is_fake], w, mean, class_vectors[present])
    y = torch.searchsorted(present, labels[held | is_fake])
    seen_mask = ~torch.isin(present, fake_unseen)
    grid = np.linspace(0.0, 0.5, 51)  # in cosine units
    best = max(grid, key=lambda g: (gzsl_accuracies(sc, y, seen_mask, float(g))["harmonic"], -g))
    return float(best)


# ------------------------------------------------------------------ models
def _prototype_head_model(backbone, vectors: torch.Tensor, names: list[str], scale: float, info: dict, *, project: torch.Tensor | None = None,
                          centre: torch.Tensor | None = None, bias: torch.Tensor | None = None):
    from .heads import make_head, prototype_spec
    from .model import TransferModel

    spec = prototype_spec(backbone.num_features, len(names), "cosine", dim=vectors.shape[1], project=project is not None)
    head = make_head(spec)
    with torch.no_grad():
        if project is not None:
            head.project.weight.copy_(project)
        if centre is not None:
            head.centre.copy_(centre)
        if bias is not None:
            head.bias.copy_(bias)
        head.scale.fill_(float(scale))
    head.add_vectors(nn.functional.normalize(vectors.float(), dim=-1), torch.arange(len(names)))
    return TransferModel(backbone, head, head_spec=spec, task="classification", label_names=list(names), strategy="zero-shot", info=info).eval()


def zeroshot_model(
    labels: str | Sequence[str] | None = None,
    *,
    labels_file: str | Path | None = None,
    backbone: Any = "minilm",
    templates: Sequence[str] | None = None,
    seen=None,
    attributes: str | Path | None = None,
    text_encoder: str = "minilm",
    calibration: str | float = "auto",
    scale: float | None = None,
    image_size: int | None = None,
    backbone_weights: str | None = None,
    device: str = "auto",
    loader: dict | None = None,
    progress: bool = False,
):
    """A zero-shot classifier over ``labels`` (names, or ``labels_file`` with descriptions).

    Without ``seen``: ``backbone`` must embed texts (a text encoder, or an image-text model such as
    ``clip/<name>``); class vectors are its embeddings of the label prompts. With ``seen`` (labelled
    data of seen classes) and an image ``backbone``: a mapping from image features to the class
    vectors (from ``attributes`` CSV, or ``text_encoder`` embeddings of names/descriptions) is
    learned on the seen classes. ``labels`` are the candidates at prediction time: unseen classes
    only, or seen and unseen (generalised; seen-class scores are lowered by ``calibration``:
    ``"auto"``, a number in cosine units, or 0).
    """
    from .fewshot.prototypes import resolve_backbone

    names, descriptions = read_labels(labels, labels_file)
    bb = resolve_backbone(backbone, image_size=image_size, weights=backbone_weights)
    info: dict[str, Any] = {"labels": names, "descriptions": descriptions}
    if seen is None:
        if attributes is not None:
            raise ConfigError("--attributes needs --seen: the map from features to attributes is learned on labelled seen classes.",
                              "pass --seen DATA with examples of the seen classes.")
        if bb.modality == "image" and not hasattr(bb, "encode_texts"):
            raise ConfigError(f"The image backbone {bb.name} has no text tower to embed the labels.",
                              "pass --seen DATA (labelled seen classes) to learn a map to label embeddings or --attributes, "
                              "or use an image-text backbone (clip/<name>).")
        vectors = label_vectors(bb, names, descriptions, templates, device)
        info["templates"] = list(templates or (IMAGE_TEMPLATES if hasattr(bb, "encode_texts") else TEXT_TEMPLATES))
        default_scale = float(getattr(bb, "logit_scale", 0.0) or 20.0)
        return _prototype_head_model(bb, vectors, names, scale or default_scale, {"zero_shot": {**info, "kind": "label-embeddings"}})

    from .data.dataset import TaskData, load_data
    from .features import extract_features

    d = seen if isinstance(seen, TaskData) else load_data(seen, **(loader or {}))
    if d.modality != bb.modality:
        raise DataError(f"--seen holds {d.modality} inputs; the backbone {bb.name} takes {bb.modality}.", "use a backbone of the data's modality.")
    all_names = list(names) + [n for n in d.label_names if n not in names]
    if attributes is not None:
        vectors = read_attributes(attributes, all_names)
        info["attributes"] = str(attributes)
    else:
        enc = resolve_backbone(text_encoder)
        vectors = label_vectors(enc, all_names, descriptions, templates, device)
        info["text_encoder"] = enc.name
    feats = extract_features(bb, d, device=device, progress=progress)
    seen_idx = torch.tensor([all_names.index(n) for n in d.label_names])
    y = seen_idx[torch.as_tensor(np.asarray(d.targets), dtype=torch.long)]
    seen_classes = torch.unique(y)
    local = torch.full((len(all_names),), -1, dtype=torch.long)
    local[seen_classes] = torch.arange(len(seen_classes))
    w, mean = fit_mapping(feats, local[y], vectors[seen_classes])
    is_seen = torch.tensor([n in d.label_names for n in names])
    if isinstance(calibration, str) and calibration != "auto":
        try:
            calibration = float(calibration)
        except ValueError:
            raise ConfigError(f"Invalid --calibration {calibration!r}.", "use auto or a number (cosine units, e.g. 0.1).") from None
    gamma = 0.0
    if is_seen.any() and (~is_seen).any():
        gamma = choose_gamma(feats, y, vectors) if calibration == "auto" else float(calibration)
    info.update({"kind": "semantic-mapping", "seen": str(d.source), "seen_classes": list(d.label_names), "gamma": gamma})
    s = float(scale or 10.0)
    bias = -s * gamma * is_seen.float()
    return _prototype_head_model(bb, vectors[: len(names)], names, s, {"zero_shot": info}, project=w, centre=mean, bias=bias)
