"""The fine-tuned network: the pretrained encoder, the head's layers up to the tap, a classifier.

SimCLRv2 (Chen et al. 2020b, Sec. 2) fine-tunes "from a middle layer" of the projection head:
the head's layers up to and including that layer stay part of the network and train with it,
and a new linear classifier reads their output. ``--from-tap h`` keeps no head layer (SimCLR v1:
the head is thrown away); ``head.i`` keeps layers 0..i (each Linear, BN, ReLU, as tapped by the
probes); ``z`` keeps the whole head::

    x (B, 3, S, S) -> encoder -> h (B, D_h) -> head.layers[:k] -> (B, D_tap) -> Linear -> (B, K)

Every parameter trains (the output BN of the head has no shift to train, as in the official
code, whose output BN is ``center=False``). The classifier starts at zero, as the official
fine-tuning commands set (``--zero_init_logits_layer=True``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from pretrain.errors import UserError
from pretrain.model import SimCLRModel


def kept_head_layers(from_tap: str, taps: list[str], num_layers: int) -> int:
    """How many head layers a fine-tuning from ``from_tap`` keeps (``taps``: the model's taps,
    ``h``, ``head.0`` ... ``z``; ``num_layers``: its head's layers)."""
    if from_tap not in taps:
        raise UserError(f"unknown tap {from_tap!r}; valid taps: {', '.join(taps)}")
    if from_tap == "h":
        return 0
    if from_tap == "z":
        return num_layers
    return int(from_tap.split(".", 1)[1]) + 1


class FinetuneNet(nn.Module):
    """encoder -> ``head_layers`` -> ``classifier``.

    Args:
        encoder: the (pretrained) encoder, (B, 3, S, S) -> (B, D_h).
        head_layers: the kept head layers, applied in order.
        classifier: Linear (D_tap -> K).
    """

    def __init__(self, encoder: nn.Module, head_layers: list[nn.Module], classifier: nn.Linear) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(*head_layers)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, S, S) -> logits (B, K)."""
        return self.classifier(self.head(self.encoder(x)).flatten(1))

    def forward_taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"logits": (B, K)}``: the shape :func:`pretrain.features.extract_features` reads."""
        return {"logits": self(x)}


def build_finetune_net(model: SimCLRModel, from_tap: str, num_classes: int) -> FinetuneNet:
    """The network that fine-tunes ``model`` from ``from_tap`` for ``num_classes`` classes.

    ``model`` is deep-copied (its weights are not changed); the classifier is zero-initialised.
    """
    taps = model.tap_names()
    keep = kept_head_layers(from_tap, taps, len(model.head.layers))
    encoder = copy.deepcopy(model.encoder)
    layers = [copy.deepcopy(layer) for layer in list(model.head.layers)[:keep]]
    width = model.num_features
    if layers:  # the kept layers' output width, whatever they are (registered heads vary)
        probe = nn.Sequential(*copy.deepcopy(layers)).eval()
        with torch.no_grad():
            width = probe(torch.zeros(2, model.num_features)).flatten(1).shape[1]
    classifier = nn.Linear(width, num_classes)
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    net = FinetuneNet(encoder, layers, classifier)
    net.train()
    return net


def reinitialised(model: SimCLRModel, seed: int) -> SimCLRModel:
    """A copy of ``model`` with every parameter and buffer re-initialised (seeded): the same
    architecture without pretraining, for an external checkpoint (a run is rebuilt from its
    config instead, :func:`pretrain.model.build_model`)."""
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            reset_stats = getattr(module, "reset_running_stats", None)
            if callable(reset_stats):
                reset_stats()
    return fresh
