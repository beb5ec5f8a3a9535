"""Layer-group freezing: frozen parameters get no gradient and frozen BatchNorm stays in eval mode.

``LayerFreezing`` applies ``--freeze N`` (the first N groups, for the whole run) and ``--unfreeze
gradual`` (head first, then one more group from the output side per ``--unfreeze-every`` epochs).
"""

from __future__ import annotations

from torch import nn

from .base import Callback, register_callback


def set_frozen_groups(backbone, n_frozen: int) -> list[nn.Module]:
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


@register_callback("layer_freezing")
class LayerFreezing(Callback):
    order = 10  # after adaptation's epoch start (which predicts), before train mode is used

    def __init__(self, freeze: int = 0, unfreeze: str = "none", every: int = 1):
        self.freeze, self.unfreeze, self.every = freeze, unfreeze, every
        self._norms: list[nn.Module] = []

    def on_epoch_start(self, trainer) -> None:
        backbone = trainer.model.backbone
        n = frozen_at_epoch(trainer.state.epoch, len(backbone.layer_groups()), self.freeze, self.unfreeze, self.every)
        self._norms = set_frozen_groups(backbone, n)
        trainer.state.frozen_groups = n

    def on_train_mode(self, trainer) -> None:
        for m in self._norms:
            m.eval()

    def on_fit_end(self, trainer) -> None:
        set_frozen_groups(trainer.model.backbone, 0)
