"""Self-training with class-balanced pseudo-labels, refreshed every epoch.

After ``pseudo_start`` of the epochs, the target set is predicted by the model as it would be
deployed; a target sample gets a pseudo-label when its confidence is above ``threshold`` or among
the top ``class_fraction`` of the samples predicted as its class (class-balanced: rare or hard
classes are not starved). Pseudo-labelled target samples then add a cross-entropy term on the
(augmented) target batches.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..base import Method, TargetBatch, register_method


def select_pseudo_labels(probs: np.ndarray, threshold: float, class_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(mask, labels): which samples get a pseudo-label, and which."""
    conf, pred = probs.max(1), probs.argmax(1)
    take = conf >= threshold
    for c in np.unique(pred):
        members = pred == c
        k = int(np.ceil(class_fraction * members.sum()))
        if k:
            cut = np.sort(conf[members])[::-1][k - 1]
            take |= members & (conf >= cut)
    return take, pred


@register_method("self-training")
class SelfTraining(Method):
    description = "pseudo-labels on the target above a confidence threshold, class-balanced, refreshed each epoch"
    needs_target_batches = True

    def __init__(self, acfg):
        super().__init__(acfg)
        self.mask: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.rounds: list[dict] = []  # per refresh: epoch, count, per-class counts

    def start_epoch(self, ada, model, epoch: int) -> None:
        start = max(1, round(self.acfg.pseudo_start * ada.cfg.epochs))
        if epoch < start:
            return
        probs = ada.target_probs if ada.target_probs is not None else ada.predict_target(model)
        mask, labels = select_pseudo_labels(probs, self.acfg.threshold, self.acfg.class_fraction)
        self.mask, self.labels = torch.from_numpy(mask), torch.from_numpy(labels).long()
        counts = np.bincount(labels[mask], minlength=probs.shape[1])
        self.rounds.append({"epoch": epoch + 1, "count": int(mask.sum()), "per_class": counts.tolist(),
                            "indices": np.flatnonzero(mask).tolist(), "labels": labels[mask].tolist()})

    def loss(self, b: TargetBatch) -> torch.Tensor | None:
        if self.mask is None:
            return None
        mask = self.mask[b.target_index].to(b.target_logits.device)
        labels = self.labels[b.target_index].to(b.target_logits.device)
        ce = F.cross_entropy(b.target_logits, labels, reduction="none")
        loss = (ce * mask.float()).sum() / len(mask)
        self.log(pseudo_loss=loss.item(), pseudo_fraction=mask.float().mean().item())
        return self.acfg.pseudo_weight * loss

    def summary(self) -> list[dict]:
        """Per refresh: epoch, number taken and per-class counts (indices and labels left out)."""
        return [{k: v for k, v in r.items() if k not in ("indices", "labels")} for r in self.rounds]
