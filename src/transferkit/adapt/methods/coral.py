"""Deep CORAL (Sun & Saenko, 2016): match the covariance of source and target features."""

from __future__ import annotations

import torch

from ..base import Method, TargetBatch, register_method


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius distance between the two feature covariances, divided by 4 d^2."""
    d = source.shape[1]
    cs, ct = torch.cov(source.T), torch.cov(target.T)
    return (cs - ct).pow(2).sum() / (4 * d * d)


@register_method("coral")
class CORAL(Method):
    description = "statistics alignment: match source and target feature covariances (Deep CORAL)"
    needs_target_batches = True

    def loss(self, b: TargetBatch) -> torch.Tensor:
        # scaled by d so that the default weight gives a loss comparable with the classification loss
        loss = coral_loss(b.source_features, b.target_features) * b.source_features.shape[1]
        self.log(coral_loss=loss.item())
        return self.acfg.adapt_weight * loss
