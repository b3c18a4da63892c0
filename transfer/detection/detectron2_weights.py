"""torchvision ResNet keys <-> detectron2 ResNet keys, and detectron2's weight pickle.

detectron2 (Wu et al. 2019) names a ResNet ``stem`` then stages ``res2..res5``; every conv
carries its own norm as ``<conv>.norm``. The mapping, for ResNet-18/34 (BasicBlock: conv1,
conv2) and ResNet-50 (Bottleneck: conv1..conv3):

=================================  ======================================
torchvision                        detectron2
=================================  ======================================
``conv1.weight``                   ``stem.conv1.weight``
``bn1.<p>``                        ``stem.conv1.norm.<p>``
``layer{i}.{b}.conv{j}.weight``    ``res{i+1}.{b}.conv{j}.weight``
``layer{i}.{b}.bn{j}.<p>``         ``res{i+1}.{b}.conv{j}.norm.<p>``
``layer{i}.{b}.downsample.0.*``    ``res{i+1}.{b}.shortcut.*``
``layer{i}.{b}.downsample.1.<p>``  ``res{i+1}.{b}.shortcut.norm.<p>``
=================================  ======================================

``<p>`` is weight, bias, running_mean, running_var or num_batches_tracked (kept: detectron2's
BN layers load it; FrozenBN reports it unused). ``fc.*`` (a classifier) is skipped and
reported; any other key is reported as unmapped, never dropped silently. The pickle is
``{"model": {name: ndarray}, "__author__": ..., "matching_heuristics": True}``; the heuristics
let detectron2 match ``res5.*`` to ``roi_heads.res5.*`` in C4 models and ``res2..5`` to
``backbone.bottom_up.*`` in FPN models.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pretrain.errors import CheckpointError
from transfer.detection.weights import BackboneSource

NORM_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_BLOCK_D2 = re.compile(r"^res([2-5])\.(\d+)\.(.+)$")


@dataclass
class KeyMapping:
    """Source key -> target key, plus every source key that was not converted and why."""

    mapped: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # key -> reason (expected)
    unmapped: list[str] = field(default_factory=list)  # keys no rule covers (a problem)


def _norm_suffix(rest: str, norm_of: str) -> str | None:
    """``bn{j}.<p>`` -> ``conv{j}.norm.<p>``-style rename of a norm parameter."""
    name, _, param = rest.partition(".")
    if param not in NORM_PARAMS:
        return None
    return f"{norm_of}.norm.{param}"


def torchvision_to_detectron2_key(key: str) -> str | None:
    """The detectron2 name of a torchvision ResNet key, or None when no rule covers it."""
    if key == "conv1.weight":
        return "stem.conv1.weight"
    if key.startswith("bn1."):
        return _norm_suffix(key, "stem.conv1")
    m = _BLOCK.match(key)
    if m is None:
        return None
    stage, block, rest = f"res{int(m.group(1)) + 1}", m.group(2), m.group(3)
    prefix = f"{stage}.{block}"
    if re.fullmatch(r"conv[1-3]\.weight", rest):
        return f"{prefix}.{rest}"
    bn = re.fullmatch(r"bn([1-3])\.(\w+)", rest)
    if bn:
        return _norm_suffix(rest, f"{prefix}.conv{bn.group(1)}")
    if rest == "downsample.0.weight":
        return f"{prefix}.shortcut.weight"
    if rest.startswith("downsample.1."):
        return _norm_suffix(rest[len("downsample."):], f"{prefix}.shortcut")
    return None


def detectron2_to_torchvision_key(key: str) -> str | None:
    """Inverse of :func:`torchvision_to_detectron2_key`."""
    if key == "stem.conv1.weight":
        return "conv1.weight"
    if key.startswith("stem.conv1.norm."):
        return "bn1." + key[len("stem.conv1.norm."):]
    m = _BLOCK_D2.match(key)
    if m is None:
        return None
    prefix = f"layer{int(m.group(1)) - 1}.{m.group(2)}"
    rest = m.group(3)
    conv = re.fullmatch(r"conv([1-3])\.weight", rest)
    if conv:
        return f"{prefix}.{rest}"
    norm = re.fullmatch(r"conv([1-3])\.norm\.(\w+)", rest)
    if norm:
        return f"{prefix}.bn{norm.group(1)}.{norm.group(2)}"
    if rest == "shortcut.weight":
        return f"{prefix}.downsample.0.weight"
    if rest.startswith("shortcut.norm."):
        return f"{prefix}.downsample.1.{rest[len('shortcut.norm.'):]}"
    return None


def map_keys(keys: list[str]) -> KeyMapping:
    """Map every torchvision key; ``fc.*`` is skipped (classifier), others unmapped."""
    out = KeyMapping()
    for key in keys:
        target = torchvision_to_detectron2_key(key)
        if target is not None:
            out.mapped[key] = target
        elif key.startswith("fc."):
            out.skipped[key] = "classifier, not part of the backbone"
        else:
            out.unmapped.append(key)
    if len(set(out.mapped.values())) != len(out.mapped):
        raise AssertionError("two source keys map to the same detectron2 key")
    return out


def to_detectron2(state: dict[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], KeyMapping]:
    """detectron2-named NumPy arrays of a torchvision ResNet state dict, and the mapping."""
    mapping = map_keys(list(state))
    arrays = {d2: state[tv].detach().cpu().numpy() for tv, d2 in mapping.mapped.items()}
    return arrays, mapping


def detectron2_backbone(source: BackboneSource) -> tuple[dict[str, np.ndarray], KeyMapping]:
    """detectron2-named arrays of ``source``'s backbone, for the export and the engine alike.

    Raises :class:`CheckpointError` (nothing is written) for what detectron2's ResNet cannot
    hold: no weights (``random``), a CIFAR stem (detectron2's ``BasicStem`` is 7x7), keys
    inside the encoder that are no ResNet's, or keys no rule maps.
    """
    if source.state_dict is None:
        raise CheckpointError("'random' has no weights to convert; give a run directory or a "
                              "weights file")
    if source.cifar_stem:
        raise CheckpointError(f"{source.path} was pretrained with a CIFAR stem (3x3 conv1); "
                              "detectron2's BasicStem is 7x7, so these weights do not fit "
                              "detectron2 (--engine torchvision takes them)")
    if source.foreign:
        raise CheckpointError(f"{len(source.foreign)} keys of {source.path} have no place in a "
                              f"{source.encoder}: {', '.join(source.foreign[:5])}; nothing was "
                              "written")
    state = {k: v.detach().cpu().contiguous() for k, v in source.state_dict.items()}
    arrays, mapping = to_detectron2(state)
    if mapping.unmapped:
        raise CheckpointError(f"{len(mapping.unmapped)} keys have no detectron2 name: "
                              f"{', '.join(mapping.unmapped[:5])}; nothing was written")
    return arrays, mapping


def from_detectron2(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """torchvision state dict from detectron2-named arrays (raises on an unknown name)."""
    out = {}
    for key, value in arrays.items():
        tv = detectron2_to_torchvision_key(key)
        if tv is None:
            raise KeyError(f"no torchvision name for detectron2 key {key!r}")
        out[tv] = torch.from_numpy(np.asarray(value))
    return out


def write_detectron2_pickle(arrays: dict[str, np.ndarray], path: Path, author: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "__author__": author, "matching_heuristics": True}, f)
