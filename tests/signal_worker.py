"""Subprocess entry for the signal tests: the CLI, sending itself SIGTERM at a chosen point.

    python tests/signal_worker.py WHERE K -- transferkit fit args...

WHERE is ``load`` (reading the data, before training), ``val`` (the K-th call of
``TransferModel.predict_outputs``: the K-th epoch's validation, then the final evaluation) or
``evaluate`` (the K-th ``TransferModel.evaluate`` call, after training). The signal is sent from
inside that call, so where it lands does not depend on timing.
"""

import os
import signal
import sys

import torch

torch.set_num_threads(1)

import transferkit.api as api  # noqa: E402
from transferkit.cli import main  # noqa: E402
from transferkit.model import TransferModel  # noqa: E402

where, k = sys.argv[1], int(sys.argv[2])
calls = {"n": 0}


def wrap(fn):
    def inner(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            os.kill(os.getpid(), signal.SIGTERM)
        return fn(*args, **kwargs)

    return inner


if where == "load":
    api.prepare_splits = wrap(api.prepare_splits)
elif where == "val":
    TransferModel.predict_outputs = wrap(TransferModel.predict_outputs)
elif where == "evaluate":
    TransferModel.evaluate = wrap(TransferModel.evaluate)
else:
    raise SystemExit(f"unknown WHERE {where}")
sys.exit(main(sys.argv[4:]))
