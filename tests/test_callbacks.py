"""The training engine's callback contract: every callback's state rides in checkpoints and comes
back on resume; a user's callback sees the events in their fixed order; loss terms add to the loss."""

from __future__ import annotations

import pytest
import torch

import transferkit as tk
from transferkit.training import Callback, LossTerm, Trainer
from transferkit.training.callbacks import CALLBACKS

pytestmark = pytest.mark.usefixtures("one_thread", "tk_cache")


def tiny(weights, **kw):
    base = dict(backbone="timm/test_efficientnet", backbone_weights=str(weights), image_size=32, epochs=3, batch_size=8,
                device="cpu", progress=False)
    return {**base, **kw}


class Recorder(Callback):
    """A user callback with its own state: the events it saw."""

    name = "recorder"

    def __init__(self):
        self.events: list[str] = []

    def _add(self, event):
        self.events.append(event)

    def on_fit_start(self, t): self._add("on_fit_start")
    def on_epoch_start(self, t): self._add("on_epoch_start")
    def on_train_mode(self, t): self._add("on_train_mode")
    def on_step_end(self, t, loss): self._add("on_step_end")
    def on_validation(self, t, record): self._add("on_validation")
    def on_epoch_end(self, t, record): self._add("on_epoch_end")
    def on_fit_end(self, t): self._add("on_fit_end")
    def on_exception(self, t, exc): self._add("on_exception")

    def state_dict(self):
        return {"events": list(self.events)}

    def load_state_dict(self, state):
        self.events = list(state["events"])


class Crash(Callback):
    """Snapshots every callback's state once epoch 2's checkpoint is written, then crashes."""

    name = "crash"
    order = 99  # after checkpointing

    def __init__(self):
        self.snapshot = None

    def on_epoch_end(self, t, record):
        if t.state.epoch == 2:
            self.snapshot = {k: v for k, v in t.callbacks.state_dict().items() if k != "crash"}
            raise RuntimeError("crash after epoch 2")


class Restored(Callback):
    name = "crash"  # the same key as Crash: it takes its place on resume
    order = {"on_fit_start": 1}  # right after checkpointing restored everything, before any other callback starts

    def __init__(self):
        self.seen = None

    def on_fit_start(self, t):
        self.seen = {k: v for k, v in t.callbacks.state_dict().items() if k != "crash"}


def _equal(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


@pytest.fixture(scope="module")
def crashed_and_resumed(tmp_path_factory, tiny_timm_weights):
    from conftest import TINY_CLASSES, draw_tiny_image
    import numpy as np

    root = tmp_path_factory.mktemp("cb")
    rng = np.random.default_rng(0)
    for cls in TINY_CLASSES:
        for i in range(8):
            draw_tiny_image(root / "data" / cls / f"{i}.png", cls, rng)
    run = root / "run"
    crash = Crash()
    with pytest.raises(RuntimeError, match="crash after epoch 2"):
        tk.fit(str(root / "data"), out=run, callbacks=[Recorder(), crash], checkpoint_every="1", **tiny(tiny_timm_weights))
    restored = Restored()
    tk.fit(str(root / "data"), resume=run, callbacks=[Recorder(), restored], progress=False)
    return crash.snapshot, restored.seen


BUILT_IN = sorted(set(CALLBACKS.names()) - {"domain_adaptation"})  # adaptation runs have no checkpoints


@pytest.mark.parametrize("key", [*BUILT_IN, "recorder"])
def test_each_callback_state_survives_a_checkpoint(crashed_and_resumed, key):
    before, after = crashed_and_resumed
    assert key in before and key in after
    assert _equal(before[key], after[key]), (key, before[key], after[key])
    if key == "best_model":
        assert before[key]["epoch"] >= 1 and "tensors" in before[key]  # it had something to carry
    if key == "recorder":
        assert before[key]["events"].count("on_epoch_end") == 2  # epoch 2's checkpoint is written after the other callbacks' epoch end


def test_a_user_callback_gets_the_events_in_order(make_image_folder, tiny_timm_weights):
    data = make_image_folder(classes=("circle", "square"), n=6)  # 12 images: 8 train -> 1 step of 8 per epoch
    rec = Recorder()
    tk.fit(str(data), callbacks=[rec], epochs=2, **{k: v for k, v in tiny(tiny_timm_weights).items() if k != "epochs"})
    per_epoch = ["on_epoch_start", "on_train_mode", "on_step_end", "on_validation", "on_epoch_end"]
    steps = rec.events.count("on_step_end")
    assert steps == 2, rec.events
    assert rec.events == ["on_fit_start", *per_epoch, *per_epoch, "on_fit_end"]
    rec2 = Recorder()

    class Boom(Callback):
        def on_step_end(self, t, loss):
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        tk.fit(str(data), callbacks=[rec2, Boom()], **tiny(tiny_timm_weights))
    assert rec2.events[-1] == "on_exception" and "on_fit_end" not in rec2.events


def test_a_loss_term_adds_to_the_loss_and_trains_its_own_parameters(make_image_folder, tiny_timm_weights):
    from transferkit.data import load_data
    from transferkit.strategies.base import make_backbone, new_model
    from transferkit.config import FitConfig

    data = load_data(make_image_folder(classes=("circle", "square"), n=6))
    cfg = FitConfig(**{k: v for k, v in tiny(tiny_timm_weights, epochs=1, patience=0).items() if k != "progress"})

    class Anchor(LossTerm):
        """Pulls a scalar of its own to 3: its gradient comes only from this term."""

        def __init__(self):
            self.w = torch.nn.Parameter(torch.zeros(()))

        def param_groups(self, cfg):
            return [{"params": [self.w], "lr": 0.5, "weight_decay": 0.0}]

        def __call__(self, trainer, features, outputs):
            return (self.w - 3.0) ** 2

    term = Anchor()
    model = new_model(make_backbone(cfg), data, cfg, "finetune")
    history = Trainer(model, cfg, loss_terms=[term], progress=False).fit(data)
    assert float(term.w) > 0.1  # it trained
    plain = new_model(make_backbone(cfg), data, cfg, "finetune")
    base = Trainer(plain, cfg, progress=False).fit(data)
    assert history[0]["train_loss"] > base[0]["train_loss"] + 1.0  # (w - 3)^2 starts at 9 and is in the loss
