"""Subprocess entry for the crash tests: the CLI, with each training step slowed so a kill lands mid-run.

    python tests/resume_worker.py SLEEP_SECONDS -- transferkit fit args...
"""

import sys
import time

import torch

torch.set_num_threads(1)

import transferkit.inputs as inputs  # noqa: E402  (the trainer cuts its batches with inputs.make_batch)
from transferkit.cli import main  # noqa: E402

delay = float(sys.argv[1])
_make_batch = inputs.make_batch


def slow_make_batch(*args, **kwargs):
    time.sleep(delay)
    return _make_batch(*args, **kwargs)


inputs.make_batch = slow_make_batch
sys.exit(main(sys.argv[3:]))
