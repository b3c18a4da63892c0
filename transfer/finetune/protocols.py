"""Fine-tuning recipes by name, each written down with its source (``--protocol``).

=============  =========================================================================
``simclr``     SimCLR's semi-supervised fine-tuning (Chen et al. 2020a, App. B.5): SGD with
               Nesterov momentum 0.9, batch 4096, learning rate 0.05 x B / 256 (0.8 at
               4096) without warm-up, no regularisation (no weight decay); 60 epochs with 1%
               of the labels, 30 with 10%; random crop + flip only. Fine-tunes from h.
``simclr-v2``  SimCLRv2's (Chen et al. 2020b, "Big Self-Supervised Models are Strong
               Semi-Supervised Learners", Sec. 3.1 "Settings and implementation details"):
               the pretraining optimizer (LARS, momentum 0.9) with weight decay and warm-up
               removed and a small learning rate, 0.005 x sqrt(B) (0.16 at B = 1024), batch
               1024, global BN; 60 epochs with 1% of the labels, 30 with 10% and with all of
               them. Fine-tunes from the first head layer (``head.0``) with 1% or 10% of the
               labels and from h with all of them (Sec. 2, "fine-tune from a middle layer").
               The official README's 1% command says the same: ``--optimizer=lars
               --learning_rate=0.005 --learning_rate_scaling=sqrt --weight_decay=0
               --train_epochs=60 --train_batch_size=1024 --warmup_epochs=0 --global_bn=True
               --num_proj_layers=3 --ft_proj_selector=1``.
``transfer``   The transfer protocol (SimCLR App. B.8, after Kornblith et al. 2019, "Do
               Better ImageNet Models Transfer Better?"): SGD with Nesterov momentum 0.9,
               batch 256, 20,000 steps; learning rate from 7 log-spaced values in
               1e-4 ... 1e-1 and weight decay from 7 log-spaced values in 1e-6 ... 1e-3 plus
               none, "divided by the learning rate", chosen on a validation split, then the
               model is refit on train + val and tested once; BN momentum max(1 - 10/s, 0.9)
               in TensorFlow's convention (s = steps per epoch), i.e. PyTorch momentum
               min(10/s, 0.1). Fine-tunes from h.
=============  =========================================================================

Common to all three, as in the official code (``tf2/model.py``, ``run.py``): the classifier is
a new Linear layer initialised to zero (``--zero_init_logits_layer=True`` in every fine-tuning
command of the official README), the learning rate follows a cosine decay to 0 over the
training steps without warm-up (the code's ``WarmUpAndCosineDecay`` with
``warmup_epochs=0``), training images get a random resized crop (area 0.08-1) and a
horizontal flip, test images the run's deterministic evaluation transform.

Every value can be overridden on the command line (``--epochs``, ``--steps``,
``--train-batch-size``, ``--lr-grid``, ``--wd-grid``); the record keeps what was used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pretrain.optim import scaled_lr
from pretrain.registry import Registry


@dataclass(frozen=True)
class Protocol:
    """One fine-tuning recipe.

    Attributes:
        name: the ``--protocol`` value.
        source: the paper section it follows (stored in records).
        optimizer: ``sgd`` (momentum, optionally Nesterov) or ``lars`` (pretrain.optim.LARS).
        nesterov: Nesterov momentum (SGD only).
        momentum: the optimizer's momentum.
        lr_grid: base learning rates (before ``lr_scaling``); several are selected on val.
        lr_scaling: ``linear`` (x B/256), ``sqrt`` (x sqrt(B)) or ``none``.
        wd_grid: weight decays; several are selected on val.
        wd_over_lr: the weight decay is divided by the learning rate (Kornblith et al.), so the
            per-step decay of SGD (lr x wd) is the grid value itself.
        batch_size: global batch size (capped to the labelled images).
        epochs_1pct, epochs_10pct, epochs_full: epochs at <= 1%, <= 10% and more labels.
        steps: a fixed number of steps instead of epochs (0: use the epochs).
        bn_momentum_rule: ``default`` (PyTorch's 0.1) or ``kornblith`` (min(10/s, 0.1)).
        tap_low, tap_full: default ``--from-tap`` with <= 10% of the labels and with more.
    """

    name: str
    source: str
    optimizer: str
    nesterov: bool
    momentum: float
    lr_grid: tuple[float, ...]
    lr_scaling: str
    wd_grid: tuple[float, ...]
    wd_over_lr: bool
    batch_size: int
    epochs_1pct: int
    epochs_10pct: int
    epochs_full: int
    steps: int = 0
    bn_momentum_rule: str = "default"
    tap_low: str = "h"
    tap_full: str = "h"

    def epochs(self, fraction: float) -> int:
        """Epochs for a labelled share ``fraction`` of the training set."""
        if fraction <= 0.01 + 1e-9:
            return self.epochs_1pct
        if fraction <= 0.1 + 1e-9:
            return self.epochs_10pct
        return self.epochs_full

    def default_tap(self, fraction: float, taps: list[str]) -> str:
        """The tap this recipe fine-tunes from (``h`` when the run lacks the recipe's layer)."""
        tap = self.tap_low if fraction <= 0.1 + 1e-9 else self.tap_full
        return tap if tap in taps else "h"

    def peak_lr(self, base_lr: float, batch_size: int) -> float:
        """The learning rate at step 0 for a global batch of ``batch_size``."""
        return scaled_lr(base_lr, batch_size, self.lr_scaling)

    def torch_weight_decay(self, wd: float, lr: float) -> float:
        """The ``weight_decay`` handed to the optimizer for grid value ``wd`` at peak ``lr``."""
        return wd / lr if self.wd_over_lr and wd else wd

    def bn_momentum(self, steps_per_epoch: int) -> float | None:
        """PyTorch BN momentum, or None to keep the modules' own."""
        if self.bn_momentum_rule == "kornblith":
            return min(10.0 / max(steps_per_epoch, 1), 0.1)
        return None


PROTOCOLS: Registry[Protocol] = Registry("fine-tuning protocol")

PROTOCOLS.add("simclr", Protocol(
    name="simclr", source="SimCLR (Chen et al. 2020a) App. B.5", optimizer="sgd", nesterov=True,
    momentum=0.9, lr_grid=(0.05,), lr_scaling="linear", wd_grid=(0.0,), wd_over_lr=False,
    batch_size=4096, epochs_1pct=60, epochs_10pct=30, epochs_full=30,
))
PROTOCOLS.add("simclr-v2", Protocol(
    name="simclr-v2", source="SimCLRv2 (Chen et al. 2020b) Sec. 3.1", optimizer="lars",
    nesterov=False, momentum=0.9, lr_grid=(0.005,), lr_scaling="sqrt", wd_grid=(0.0,),
    wd_over_lr=False, batch_size=1024, epochs_1pct=60, epochs_10pct=30, epochs_full=30,
    tap_low="head.0", tap_full="h",
))
PROTOCOLS.add("transfer", Protocol(
    name="transfer", source="SimCLR (Chen et al. 2020a) App. B.8; Kornblith et al. 2019",
    optimizer="sgd", nesterov=True, momentum=0.9,
    lr_grid=tuple(float(10 ** (-4 + 0.5 * i)) for i in range(7)), lr_scaling="none",
    wd_grid=(0.0, *(float(10 ** (-6 + 0.5 * i)) for i in range(7))), wd_over_lr=True,
    batch_size=256, epochs_1pct=0, epochs_10pct=0, epochs_full=0, steps=20_000,
    bn_momentum_rule="kornblith",
))


def schedule_length(protocol: Protocol, fraction: float, num_images: int, batch_size: int,
                    epochs: int = 0, steps: int = 0) -> int:
    """Optimizer steps of one fine-tuning of ``num_images`` at global batch ``batch_size``:
    ``steps`` when given (> 0), else the protocol's fixed steps, else ``epochs`` (> 0) or the
    protocol's epochs for ``fraction`` passes over the images (rounded up; at least 1)."""
    if steps > 0:
        return steps
    if epochs <= 0 and protocol.steps > 0:
        return protocol.steps
    passes = epochs if epochs > 0 else protocol.epochs(fraction)
    return max(1, math.ceil(passes * num_images / batch_size))
