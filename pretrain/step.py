"""One SimCLR optimisation step that never waits for the device (bf16, channels_last, compile).

The loss and a non-finite flag are accumulated on the device; :meth:`TrainStep.read_loss` is the
only host synchronisation, called every ``train.log_every`` steps and at the end of each epoch.
A non-finite loss therefore stops the run at the next read, naming the first bad step; the
checkpoint is only written after that read, so it never holds weights updated by a NaN step.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from pretrain.errors import NonFiniteLossError
from pretrain.loss import nt_xent


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether ``train.precision`` asks for bf16 autocast on ``device``: ``bf16``, or ``auto``
    on CUDA (fp32 elsewhere). Pretraining, detection and fine-tuning all decide it here."""
    return precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda")


class DeviceLossMeter:
    """Losses summed on the device, with the index of the first non-finite one: adding never
    waits for the device, :meth:`read` is the one host synchronisation. The SimCLR step and
    fine-tuning (:mod:`transfer.finetune.loop`) both keep their loss in one."""

    def __init__(self, device: torch.device) -> None:
        self._sum = torch.zeros((), device=device)
        self._count = 0
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def add(self, loss: torch.Tensor, step: int) -> None:
        """Add the detached scalar ``loss`` of 0-based step ``step``."""
        bad = ~torch.isfinite(loss) & (self._first_bad < 0)
        self._first_bad = torch.where(bad, step, self._first_bad)
        self._sum = self._sum + loss
        self._count += 1

    def read(self) -> tuple[float, int]:
        """(mean loss since the last read, NaN if none; the 0-based step of the first
        non-finite loss ever added, -1 if none). Starts a new mean."""
        first_bad, total = int(self._first_bad), float(self._sum)
        mean = total / self._count if self._count else float("nan")
        self._sum.zero_()
        self._count = 0
        return mean, first_bad


class TrainStep:
    """One SimCLR optimisation step that never waits for the device.

    ``step(x1, x2, lr)`` enqueues forward (bf16 autocast where ``precision`` asks for it,
    channels_last on CUDA), NT-Xent, backward and ``optimizer.step()``; the loss is summed on
    the device together with the index of the first non-finite step. ``read_loss()`` is the
    only host synchronisation: the mean loss since the last read, or NonFiniteLossError.

    Args:
        model: the SimCLR model (or its DDP wrapper), already on ``device`` (channels_last there).
        optimizer: any optimizer over its parameters; ``lr`` is set per step.
        temperature: NT-Xent tau.
        precision: "auto" (bf16 on CUDA, fp32 elsewhere), "bf16" or "fp32".
        channels_last: feed NHWC-strided inputs on CUDA (ignored on the CPU).
        compile_mode: "none", or a ``torch.compile`` mode for forward + loss ("default",
            "reduce-overhead" = CUDA graphs, "max-autotune"); backward and the optimizer run
            eagerly.

    Attributes:
        steps: steps taken; set it after a resume so that errors name the global step.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        temperature: float,
        device: torch.device,
        precision: str = "auto",
        channels_last: bool = True,
        compile_mode: str = "none",
    ) -> None:
        self.model, self.optimizer, self.temperature = model, optimizer, temperature
        self.device = torch.device(device)
        self.bf16 = use_bf16(precision, self.device)
        self.channels_last = channels_last and self.device.type == "cuda"
        self.cuda_graphs = compile_mode == "reduce-overhead"
        self._forward: Any = self._forward_loss
        if compile_mode != "none":
            self._forward = torch.compile(self._forward_loss, mode=compile_mode)
        self.steps = 0
        self._losses = DeviceLossMeter(self.device)

    def _forward_loss(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x1, x2])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        bf16 = torch.autocast(self.device.type, dtype=torch.bfloat16)
        with bf16 if self.bf16 else nullcontext():
            z = self.model(x)
        z1, z2 = z.float().chunk(2)
        return nt_xent(z1, z2, self.temperature)

    def __call__(self, x1: torch.Tensor, x2: torch.Tensor, lr: float) -> torch.Tensor:
        """One step on views x1, x2 (B, 3, S, S) at learning rate ``lr``; returns the detached
        loss (a device scalar: reading it syncs)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: graph outputs may be reused
        loss = self._forward(
            x1.to(self.device, non_blocking=True), x2.to(self.device, non_blocking=True)
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        loss = loss.detach().clone()  # a CUDA-graph output is overwritten by the next replay
        self._losses.add(loss, self.steps)
        self.steps += 1
        return loss

    def read_loss(self) -> float:
        """Mean loss over the steps since the last read (one host sync); NaN if none."""
        mean, first_bad = self._losses.read()
        if first_bad >= 0:
            raise NonFiniteLossError(
                f"non-finite NT-Xent loss at step {first_bad + 1} (mean since the last read: "
                f"{mean}); lower optim.lr or check the data"
            )
        return mean
