"""DANN (Ganin & Lempitsky, 2015): a domain classifier behind a gradient reversal layer.

The classifier learns to tell source features from target features; the reversed gradient trains
the backbone to make them indistinguishable. The reversal weight follows 2 / (1 + exp(-10 p)) - 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Method, TargetBatch, rampup, register_method


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


def reverse_gradient(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-coeff`` on the way back."""
    return _Reverse.apply(x, coeff)


def domain_classifier(in_features: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, 1),
    )


@register_method("dann")
class DANN(Method):
    description = "adversarial: domain classifier + gradient reversal (Ganin & Lempitsky 2015)"
    needs_target_batches = True

    def check(self, model) -> None:
        if not len(self.modules):
            self.modules.append(domain_classifier(model.backbone.num_features, self.acfg.discriminator_hidden))

    def loss(self, b: TargetBatch) -> torch.Tensor:
        coeff = rampup(b.progress)
        feats = torch.cat([b.source_features, b.target_features])
        logits = self.modules[0](reverse_gradient(feats, coeff)).squeeze(1)
        domain = torch.cat([torch.ones(len(b.source_features)), torch.zeros(len(b.target_features))]).to(logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, domain)
        self.log(domain_loss=loss.item(), domain_accuracy=((logits > 0).float() == domain).float().mean().item(), reversal=coeff)
        return self.acfg.adapt_weight * loss
