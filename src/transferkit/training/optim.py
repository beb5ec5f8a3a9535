"""One optimiser and schedule builder for every training loop (the trainer and the side loops:
probe heads, meta-training, few-shot text fine-tuning, zero-shot mappings).

AdamW (fused on CUDA) with per-group learning rates; no weight decay on biases and norm weights
(1-D tensors); warm-up then cosine (or linear) decay, or one-cycle; gradient clipping at a fixed
norm with a finiteness check.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn

CLIP_NORM = 5.0


def decay_groups(params: Iterable[nn.Parameter], lr: float | None, weight_decay: float, name: str = "params",
                 no_decay: Iterable[nn.Parameter] = ()) -> list[dict[str, Any]]:
    """Two AdamW groups: matrices and kernels with ``weight_decay``; 1-D tensors (biases, norm
    weights) and ``no_decay`` without. Empty groups are left out."""
    params = list(params)
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1] + list(no_decay)
    extra = {} if lr is None else {"lr": lr}
    out = []
    if decay:
        out.append({"name": name, "params": decay, **extra, "weight_decay": weight_decay})
    if rest:
        out.append({"name": f"{name}.no_decay", "params": rest, **extra, "weight_decay": 0.0})
    return out


def param_groups(model, cfg) -> list[dict[str, Any]]:
    """One optimiser group per backbone layer group (deeper = higher lr) plus the head.

    Backbone group i of n gets ``lr * backbone_lr_ratio * layer_decay ** (n - 1 - i)``; biases and
    norm weights (1-D tensors) get no weight decay.
    """
    params = dict(model.backbone.named_parameters())
    groups = model.backbone.layer_groups()
    n = len(groups)
    out: list[dict[str, Any]] = []
    for i, names in enumerate(groups):
        lr = cfg.lr * cfg.backbone_lr_ratio * cfg.layer_decay ** (n - 1 - i)
        out += decay_groups([params[k] for k in names], lr, cfg.weight_decay, f"backbone.{i}")
    out += decay_groups(model.head.parameters(), cfg.lr, cfg.weight_decay, "head")
    return out


def adamw(groups: list[dict[str, Any]], lr: float, device: torch.device | str = "cpu", weight_decay: float = 0.01) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=torch.device(device).type == "cuda")


def warmup_cosine(warm: int, total_steps: int):
    """Learning-rate factor of a step: linear warm-up over ``warm`` steps, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def warmup_linear(warm: int, total_steps: int):
    """Linear warm-up over ``warm`` steps times a linear decay to 0 over all steps."""

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warm) * max(0.0, (total_steps - step) / total_steps)

    return factor


def scheduler(opt: torch.optim.Optimizer, kind: str, total_steps: int, warmup: float = 0.1, warm_steps: int | None = None):
    """``cosine`` (warm-up + cosine), ``linear`` (warm-up x linear decay) or ``onecycle``; the warm-up
    is ``warm_steps`` steps, or the fraction ``warmup`` of all steps."""
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total_steps,
                                                   pct_start=max(warmup, 0.01))
    warm = warm_steps if warm_steps is not None else int(warmup * total_steps)
    shape = {"cosine": warmup_cosine, "linear": warmup_linear}[kind]
    return torch.optim.lr_scheduler.LambdaLR(opt, shape(warm, total_steps))


def clip_gradients(params: Iterable[nn.Parameter], max_norm: float = CLIP_NORM, clip=None) -> torch.Tensor:
    """Clip the gradients' global norm; returns the norm before clipping (non-finite when a
    gradient is). ``clip``: the runtime's clipping function (distributed-aware)."""
    params = [p for p in params if p.grad is not None]
    return (clip or torch.nn.utils.clip_grad_norm_)(params, max_norm)
