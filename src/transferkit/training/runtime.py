"""The device and process seam: one object between the trainer and Hugging Face accelerate.

The trainer calls only this: ``device``, ``autocast``, ``wrap`` (data parallel), ``no_sync``,
``backward``, ``clip_grad_norm_``, ``shard`` (this process's slice of a global batch),
``gather`` (outputs of every process, in order), ``mean``/``any`` across processes,
``is_main`` and ``wait``. With one process every call is the plain single-device operation, so a
CPU run stays bit-for-bit what it was; with several (``torchrun`` or ``accelerate launch``) it is
accelerate's distributed data parallel over the process group accelerate set up.

bf16 autocast on CUDA is ours rather than accelerate's ``mixed_precision``: accelerate fixes
mixed precision once per process, while runs in one process may use different devices.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Sequence

import numpy as np
import torch


def distributed_env() -> bool:
    """Launched as one of several processes (torchrun / accelerate launch set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def main_process() -> bool:
    """This process writes files (the only one, or rank 0 of several), known before any setup."""
    return int(os.environ.get("RANK", "0")) == 0


class Runtime:
    """``device``: ``"auto" | "cpu" | "cuda" | "mps"``. Distributed data parallel is told that some
    parameters may get no gradient in a step: frozen layer groups, and parts of a pretrained model
    the pooled features do not use (a BERT pooler)."""

    def __init__(self, device: str = "auto"):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        from ..inputs import resolve_device

        dev = resolve_device(device)
        kwargs = [DistributedDataParallelKwargs(find_unused_parameters=True)]
        if distributed_env():
            self.accelerator = Accelerator(cpu=dev.type == "cpu", kwargs_handlers=kwargs)
            self.device = self.accelerator.device
        else:  # one process: the device is the run's own (accelerate's state is fixed per process)
            self.accelerator = Accelerator(kwargs_handlers=kwargs)
            self.device = dev
        self.world_size = self.accelerator.num_processes
        self.rank = self.accelerator.process_index

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # ------------------------------------------------------------------ computation
    def autocast(self):
        from ..inputs import autocast

        return autocast(self.device)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """Distributed data parallel over the processes (the module itself with one process)."""
        return self.accelerator.prepare_model(module, device_placement=False) if self.distributed else module

    def no_sync(self, module: torch.nn.Module, skip: bool):
        """Accumulate gradients locally (no all-reduce) for all but the last micro-batch of a step."""
        return self.accelerator.no_sync(module) if (skip and self.distributed) else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def clip_grad_norm_(self, params: Sequence[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        return self.accelerator.clip_grad_norm_(params, max_norm)

    # ------------------------------------------------------------------ data across processes
    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This process's contiguous slice of a global batch (sizes differ by at most one)."""
        if not self.distributed:
            return idx
        bounds = np.linspace(0, len(idx), self.world_size + 1).round().astype(int)
        return idx[bounds[self.rank] : bounds[self.rank + 1]]

    def gather(self, local: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """Every process's rows in rank order; ``sizes``: each process's row count."""
        if not self.distributed:
            return local
        from accelerate.utils import pad_across_processes

        padded = pad_across_processes(local.contiguous(), dim=0)
        every = self.accelerator.gather_for_metrics(padded)
        width = padded.shape[0]
        return torch.cat([every[r * width : r * width + n] for r, n in enumerate(sizes)])

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(value, "mean") if self.distributed else value

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on one (a consistent decision, e.g. to stop)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.accelerator.reduce(t, "sum").item() > 0)

    def wait(self) -> None:
        if self.distributed:
            self.accelerator.wait_for_everyone()

    def info(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "device": str(self.device)}
