"""Layer-group freezing: frozen parameters get no gradient and frozen BatchNorm stays in eval mode."""

from __future__ import annotations

from torch import nn

from .backbones.base import Backbone


def set_frozen_groups(backbone: Backbone, n_frozen: int) -> list[nn.Module]:
    """Freeze the first ``n_frozen`` layer groups (input side), unfreeze the rest.

    Returns the normalisation modules whose parameters are all frozen; callers keep those in eval
    mode during training so their running statistics stay unchanged.
    """
    groups = backbone.layer_groups()
    frozen_names = {n for g in groups[: max(0, n_frozen)] for n in g}
    for name, p in backbone.named_parameters():
        p.requires_grad_(name not in frozen_names)
    frozen_norms = []
    for mod_name, mod in backbone.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            names = [f"{mod_name}.{pn}" for pn, _ in mod.named_parameters(recurse=False)]
            if names and all(n in frozen_names for n in names):
                frozen_norms.append(mod)
            elif not names and n_frozen >= len(groups):  # affine=False BN in a fully frozen backbone
                frozen_norms.append(mod)
    return frozen_norms


def frozen_at_epoch(epoch: int, n_groups: int, freeze: int, unfreeze: str, every: int) -> int:
    """How many layer groups are frozen at ``epoch`` (0-based).

    ``none``: ``freeze`` throughout. ``gradual``: all groups frozen for the first stage (head only),
    then one more group from the output side per stage, never below ``freeze``.
    """
    freeze = min(freeze, n_groups)
    if unfreeze == "none":
        return freeze
    stage = epoch // every
    return max(freeze, n_groups - stage)
