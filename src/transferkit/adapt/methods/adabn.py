"""AdaBN (Li et al., 2016): re-estimate every BatchNorm layer's statistics on the target data.

Free (no gradient step) and strong for CNNs whose domains differ in colour and contrast. During
training with other methods, the target batches already pass through BatchNorm on their own, so
the network learns with per-domain normalisation; the final step makes inference match it.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from ...inputs import autocast, make_batch
from ..base import Method, register_method


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm(model, prepared, device: torch.device, batch_size: int = 128) -> int:
    """Replace the running mean/var of every BatchNorm layer of ``model.backbone`` by their average
    over ``prepared`` inputs (centre crops, no augmentation). Returns the number of layers updated."""
    backbone = model.backbone
    layers = batchnorm_layers(backbone)
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    was_training = model.training
    model.eval().to(device)
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
        m.train()
    n = len(prepared)
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        if len(idx) < 2 and start > 0:  # a last batch of one adds no variance information
            break
        with autocast(device):
            backbone(make_batch(backbone, prepared, idx, device))
    for m, mom in zip(layers, momenta):
        m.momentum = mom
    model.train(was_training)
    return len(layers)


@register_method("adabn")
class AdaBN(Method):
    description = "re-estimate BatchNorm statistics on the target data (CNN backbones)"

    def check(self, model) -> None:
        if not batchnorm_layers(model.backbone):
            raise ConfigError(
                f"adabn re-estimates BatchNorm statistics, and backbone {model.backbone.name!r} has no BatchNorm layers "
                "(transformers use LayerNorm).",
                "use --method dann, coral or self-training for this backbone.",
            )

    def finalize(self, model, ada) -> None:
        self.check(model)
        recompute_batchnorm(model, ada.target_store(model.backbone), ada.device, ada.cfg.eval_batch_size)
