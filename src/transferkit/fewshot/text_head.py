"""Few-shot text classification with a label prior: a handful of examples per class plus the
classes' names (and one-line descriptions).

The zero-shot class vector (the encoder's embedding of a label's name and description, see
``transferkit.zeroshot.label_vectors``) counts as ``prior_weight`` extra examples of its class:
the class vector is ``sum_i normalise(f(x_i)) + prior_weight * v_label``, scored by cosine. With
five examples this beats both prototypes and zero-shot alone; with many examples the prior fades
and the vectors become plain prototypes. ``model.add_support`` keeps working that way.

``epochs > 0`` first fine-tunes the whole encoder for a few epochs on the examples (and the
description texts as one more example per class): cross-entropy of cosine logits against a
class-vector head initialised from the label prior and pulled back towards it, AdamW with a
linear warmup/decay. That head only steers training; the returned model's class vectors are
recomputed from the fine-tuned encoder as above (as SetFit fits a new head after contrastive
fine-tuning). On the fortunes topics (25 classes, 5 per class; benchmarks/fortunes.py) it takes
about two minutes on a 2-core CPU.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError


def prior_class_vectors(features: torch.Tensor, labels: torch.Tensor, label_vecs: torch.Tensor,
                        prior_weight: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sums [C, D], counts [C])``: the normalised example embeddings of each class plus
    ``prior_weight`` times its unit label vector (``counts`` = examples + ``prior_weight``).
    A class without examples keeps its label vector (zero-shot)."""
    if prior_weight < 0:
        raise ConfigError(f"prior_weight must be >= 0 (got {prior_weight}).", "pass 0 (plain prototypes) or more.")
    n_classes = label_vecs.shape[0]
    labels = torch.as_tensor(labels, dtype=torch.long)
    z = nn.functional.normalize(features.float(), dim=-1)
    sums = torch.zeros(n_classes, z.shape[1]).index_add_(0, labels, z)
    counts = torch.bincount(labels, minlength=n_classes).float()
    if prior_weight == 0 and (counts == 0).any():
        raise DataError(f"No example for class index {int(torch.nonzero(counts == 0)[0])} and no label prior.",
                        "give every class an example, or a prior_weight > 0.")
    sums = sums + prior_weight * nn.functional.normalize(label_vecs.float(), dim=-1)
    return sums, counts + prior_weight


def _descriptions(names: Sequence[str], labels_file: str | Path | None, descriptions: dict[str, str] | None) -> dict[str, str]:
    out = dict(descriptions or {})
    if labels_file is not None:
        from ..zeroshot import read_labels

        file_names, file_desc = read_labels(labels_file=labels_file)
        unknown = [n for n in file_names if n not in names]
        if unknown:
            raise DataError(f"{labels_file} describes {unknown[0]!r}, which is not a class of the support set.",
                            f"use the support set's class names: {', '.join(names)}.")
        out = {**file_desc, **out}
    return out


def finetune_encoder(backbone, texts: Sequence[str], labels: Sequence[int] | np.ndarray, init_vectors: torch.Tensor, *,
                     epochs: int = 10, lr: float = 1e-4, head_lr: float = 1e-2, scale: float = 5.0, reg: float = 1.0,
                     batch_size: int = 16, warmup: float = 0.1, weight_decay: float = 0.01, seed: int = 0,
                     device: str | torch.device = "auto") -> list[dict[str, float]]:
    """Fine-tune ``backbone`` in place on labelled ``texts``: cross-entropy of ``scale * cos(f(x), w_c)``
    with a class-vector head ``w`` started at ``init_vectors`` and pulled back towards them
    (``reg * sum ||w - w0||^2 / C``). Returns one record per epoch (mean loss, seconds)."""
    from ..inputs import resolve_device
    from ..training.optim import adamw, clip_gradients, decay_groups, scheduler

    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError("epochs, batch_size and lr must be positive.", "e.g. epochs=10, batch_size=16, lr=1e-4.")
    dev = resolve_device(device) if isinstance(device, str) else device
    texts = [str(t) for t in texts]
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    w0 = nn.functional.normalize(init_vectors.float(), dim=-1).to(dev)
    w = nn.Parameter(w0.clone())
    params = [p for p in backbone.parameters() if p.requires_grad]
    opt = adamw(decay_groups(params, lr, weight_decay) + [{"params": [w], "lr": head_lr, "weight_decay": 0.0}], lr)
    n = len(texts)
    per_epoch = (n + batch_size - 1) // batch_size
    total = epochs * per_epoch
    sched = scheduler(opt, "linear", total, warm_steps=max(1, int(warmup * total)))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    backbone.to(dev).train()
    history = []
    for epoch in range(epochs):
        t0, losses = time.perf_counter(), []
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
            batch = {k: v.to(dev) for k, v in backbone.tokenize([texts[i] for i in idx]).items()}
            z = nn.functional.normalize(backbone(batch).float(), dim=-1)
            logits = scale * z @ nn.functional.normalize(w, dim=-1).T
            loss = nn.functional.cross_entropy(logits, y[idx].to(dev)) + reg * (w - w0).pow(2).sum() / len(w0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(params + [w])
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(time.perf_counter() - t0, 2)})
    backbone.eval().cpu()
    return history


def text_fewshot_model(
    support,
    *,
    labels_file: str | Path | None = None,
    descriptions: dict[str, str] | None = None,
    backbone: Any = "minilm",
    prior_weight: float = 3.0,
    epochs: int = 10,
    lr: float = 1e-4,
    head_lr: float = 1e-2,
    train_scale: float = 5.0,
    scale: float = 10.0,
    reg: float = 1.0,
    batch_size: int = 16,
    description_examples: bool = True,
    templates: Sequence[str] | None = None,
    seed: int = 0,
    device: str = "auto",
    loader: dict | None = None,
):
    """A few-shot text classifier over the support set's classes, helped by their names and
    ``descriptions`` (a dict, or ``labels_file`` with ``name: description`` lines as for
    ``transferkit zeroshot --labels-file``; classes without one use their name alone).

    ``epochs=0``: no training, the frozen encoder's examples plus label prior (instant).
    ``epochs>0``: fine-tune the encoder first (see the module docstring), with cosine logits times
    ``train_scale`` (on fortunes 5 and 10 beat 20 by 4 points); ``description_examples`` adds each
    description as one more training example of its class. ``backbone``: a text
    encoder name, folder, ``Backbone`` or ``TransferModel`` (it is fine-tuned in place: pass a
    name to get a fresh copy). Returns a ``TransferModel`` with a prototype head (cosine times
    ``scale``, which sets the reported probabilities, not the ranking), so it predicts, saves,
    loads and takes ``add_support``.
    """
    from ..data.dataset import TaskData, load_data
    from ..features import compute_features
    from ..heads import make_head, prototype_spec
    from ..model import TransferModel
    from ..zeroshot import label_vectors
    from .prototypes import check_support, resolve_backbone

    data = support if isinstance(support, TaskData) else load_data(support, min_classes=1, **(loader or {}))
    if data.task != "classification" or data.modality != "text":
        raise DataError(f"Support set {data.source} is not single-label text classification.", "give labelled texts (a JSONL/CSV manifest).")
    check_support(data, data.source)
    if epochs < 0:
        raise ConfigError(f"epochs must be >= 0 (got {epochs}).", "pass 0 (no training) or a few epochs.")
    bb = resolve_backbone(backbone)
    if bb.modality != "text":
        raise ConfigError(f"{bb.name} is not a text encoder.", "use a text backbone such as minilm.")
    names = list(data.label_names)
    desc = _descriptions(names, labels_file, descriptions)
    y = torch.as_tensor(np.asarray(data.targets), dtype=torch.long)
    t0 = time.perf_counter()
    info: dict[str, Any] = {"support": {"source": str(data.source), "examples": len(data), "classes": len(names)},
                            "descriptions": desc, "prior_weight": prior_weight}
    if epochs:
        feats = compute_features(bb, data.inputs, batch_size=64, device=device)
        sums, _ = prior_class_vectors(feats, y, label_vectors(bb, names, desc, templates, device), prior_weight)
        texts, labels = list(data.inputs), y.tolist()
        if description_examples:
            texts += [desc[n] for n in names if desc.get(n)]
            labels += [i for i, n in enumerate(names) if desc.get(n)]
        info["finetune"] = {"epochs": epochs, "lr": lr, "head_lr": head_lr, "scale": train_scale, "reg": reg, "batch_size": batch_size,
                            "description_examples": description_examples, "seed": seed}
        info["history"] = finetune_encoder(bb, texts, labels, sums, epochs=epochs, lr=lr, head_lr=head_lr, scale=train_scale, reg=reg,
                                           batch_size=batch_size, seed=seed, device=device)
    feats = compute_features(bb, data.inputs, batch_size=64, device=device)
    sums, counts = prior_class_vectors(feats, y, label_vectors(bb, names, desc, templates, device), prior_weight)
    spec = prototype_spec(bb.num_features, len(names), "cosine")
    head = make_head(spec)
    with torch.no_grad():
        head.sums.copy_(sums)
        head.counts.copy_(counts)
        head.scale.fill_(float(scale))
    info["train_seconds"] = round(time.perf_counter() - t0, 2)
    strategy = "fewshot-text-finetune" if epochs else "fewshot-text-prior"
    return TransferModel(bb.cpu(), head, head_spec=spec, task="classification", label_names=names, strategy=strategy, info=info).eval()
