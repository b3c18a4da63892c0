"""Where a detection backbone's weights come from: a run directory, a weights file, or none.

* a run directory of ``simclr-pretrain``: the encoder's weights; the projection head is dropped
  (detection fine-tunes ``h``'s network, as in SimCLR Sec. 4 and MoCo Sec. 4.2); images are
  normalised with the run's own statistics (its :class:`~pretrain.run.RunSetup`);
* any weights file the probes read (torchvision/timm ``.pth``/``.pt``/``.safetensors``,
  lightly, solo-learn, our ``checkpoint.pt``): read by :func:`probes.checkpoints.load_any`, the
  one checkpoint loader, with the architecture read from the keys; ImageNet statistics;
* ``random``: the random-init baseline (needs ``model.encoder``); ImageNet statistics.

Every key is accounted for: :class:`LoadReport` lists loaded, missing and ignored keys, and
the detection command prints it. The record's ``setup`` block is :func:`probes.records.setup_block`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrain.augment import IMAGENET, RGB
from pretrain.errors import CheckpointError, ConfigError
from probes.checkpoints import load_any
from probes.key_layouts import RESNETS
from probes.records import random_init_setup, setup_block


@dataclass
class BackboneSource:
    """A resolved initialisation: architecture, weights (torchvision key names) and provenance."""

    kind: str  # "run" | "file" | "random"
    path: str
    encoder: str
    cifar_stem: bool = False
    state_dict: dict[str, torch.Tensor] | None = None
    dropped: list[str] = field(default_factory=list)  # source keys not loaded into the backbone
    foreign: list[str] = field(default_factory=list)  # of those, keys inside the encoder itself
    setup: dict[str, Any] = field(default_factory=dict)  # the records' setup block
    pixel_mean: RGB = IMAGENET.mean
    pixel_std: RGB = IMAGENET.std

    def normalisation(self, mean: Sequence[float] = (),
                      std: Sequence[float] = ()) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The RGB mean and std (0-1 units) images are normalised with, in both engines and
        the export: the config's ``model.pixel_mean``/``pixel_std`` where set, else this
        source's (the run's own statistics; ImageNet's for files and random init)."""
        return (tuple(mean) if mean else self.pixel_mean, tuple(std) if std else self.pixel_std)


@dataclass
class LoadReport:
    loaded: list[str]
    missing: list[str]
    ignored: list[str]

    def summary(self, source: BackboneSource) -> str:
        if source.kind == "random":
            return f"backbone: {source.encoder}, random init ({len(self.missing)} tensors)"
        missing = ", ".join(self.missing) if self.missing else "none"
        ignored = ", ".join(self.ignored) if self.ignored else "none"
        return (f"backbone: {source.encoder} from {source.kind} {source.path}: loaded "
                f"{len(self.loaded)} tensors; missing: {missing}; ignored: {ignored}")


def load_backbone_source(source: str, encoder: str = "") -> BackboneSource:
    """Resolve ``source`` (run dir, weights file or ``random``); ``encoder`` must agree."""
    if encoder and encoder not in RESNETS:
        raise ConfigError(f"model.encoder must be one of {', '.join(RESNETS)}; got {encoder!r}")
    if source == "random":
        if not encoder:
            raise ConfigError("random init needs model.encoder=resnet18|resnet34|resnet50")
        return BackboneSource("random", "", encoder, setup=random_init_setup(encoder))
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"backbone source not found: {source} (a run directory, a .pth/"
                              ".safetensors state dict, or 'random')")
    loaded = load_any(path, allow_missing=True)
    what = f"run {path}" if loaded.run is not None else str(path)
    if loaded.encoder not in RESNETS:
        raise ConfigError(f"{what} has encoder {loaded.encoder!r}; detection needs one of "
                          f"{', '.join(RESNETS)}")
    if encoder and encoder != loaded.encoder:
        held = "was pretrained with" if loaded.run is not None else "holds"
        raise ConfigError(f"model.encoder={encoder} but {what} {held} {loaded.encoder} weights")
    missing = set(loaded.missing_keys)
    weights = {k: v for k, v in loaded.model.encoder.state_dict().items() if k not in missing}
    head_keys = [f"head.{k}" for k in loaded.model.head.state_dict()]
    dropped = sorted(loaded.unused_keys + head_keys)
    if loaded.run is not None:
        run = loaded.run
        return BackboneSource("run", str(path), loaded.encoder, loaded.cifar_stem, weights,
                              dropped, [], setup_block(loaded), run.setup.mean, run.setup.std)
    return BackboneSource("file", str(path), loaded.encoder, loaded.cifar_stem, weights, dropped,
                          loaded.foreign_keys, setup_block(loaded))


def load_into(encoder: nn.Module, source: BackboneSource) -> LoadReport:
    """Copy ``source``'s weights into a torchvision ResNet ``encoder`` (before norm conversion)."""
    own = list(encoder.state_dict())
    if source.state_dict is None:
        return LoadReport([], own, [])
    try:
        result = encoder.load_state_dict(source.state_dict, strict=False)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        raise CheckpointError(f"weights in {source.path} do not fit {source.encoder}: "
                              f"{lines[0] if lines else str(exc).splitlines()[0]}") from None
    missing = list(result.missing_keys)
    unexpected = list(result.unexpected_keys)
    loaded = [k for k in own if k not in set(missing)]
    return LoadReport(loaded, missing, sorted(unexpected) + source.dropped)
