"""Other libraries' key layouts mapped onto our model: architecture, encoder and head weights.

The knowledge of how torchvision, timm, lightly, solo-learn and our own checkpoints name their
tensors, used by :func:`probes.checkpoints.load_any`:

* :func:`split_keys` separates encoder, head and other keys (``backbone.``/``encoder.``,
  ``projection_head.``/``projector.``/``head.``) and names the source library;
* :func:`infer_architecture` reads a ResNet's depth (18/34/50) and CIFAR stem from its keys;
* :func:`load_encoder_weights` copies weights into our encoder (lightly's integer-indexed
  ``nn.Sequential(*resnet.children())`` keys included), every weight accounted for;
* :func:`build_head_from_keys` rebuilds a projector as our ``linear`` or ``mlp`` head.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pretrain.encoders import build_encoder
from pretrain.errors import CheckpointError
from pretrain.heads import HeadShape, ProjectionHead, build_head

BACKBONE_PREFIXES = ("backbone.", "encoder.")
HEAD_PREFIXES = ("projection_head.", "projector.", "head.")
RESNETS = ("resnet18", "resnet34", "resnet50")
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.fc.")  # an encoder file's own classifier


def infer_resnet(keys: list[str]) -> str:
    """resnet18/34/50 from torchvision key names (block type and depth of layer3)."""
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in keys)
    blocks = {int(k.split(".")[1]) for k in keys if k.startswith("layer3.")}
    depth = max(blocks) + 1 if blocks else 0
    arch = {(False, 2): "resnet18", (False, 6): "resnet34", (True, 6): "resnet50"}.get(
        (bottleneck, depth)
    )
    if arch is None:
        raise CheckpointError(
            f"cannot tell which ResNet these weights are (bottleneck={bottleneck}, "
            f"{depth} blocks in layer3); known: {', '.join(RESNETS)}"
        )
    return arch


def infer_architecture(encoder_sd: dict[str, torch.Tensor], path: Path) -> tuple[str, bool]:
    """(encoder name, cifar_stem) of an external ResNet, from its keys and conv1's kernel."""
    sd = rename_sequential_keys(encoder_sd, resnet_children())
    names = list(sd)
    if "conv1.weight" not in sd and not any(k.startswith("layer1.") for k in names):
        raise CheckpointError(
            f"{path} does not hold ResNet weights; name its architecture, e.g. "
            "--encoder timm:vit_small_patch16_224 (or --encoder resnet18 --cifar-stem)"
        )
    try:
        arch = infer_resnet(names)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}; name its architecture with --encoder") from None
    conv1 = sd.get("conv1.weight")
    return arch, conv1 is not None and tuple(conv1.shape[-2:]) == (3, 3)


@functools.cache
def resnet_children() -> tuple[str, ...]:
    """torchvision's ResNet child modules in order (the same for every depth)."""
    return tuple(name for name, _ in build_encoder("resnet18").named_children())


def rename_sequential_keys(
    sd: dict[str, torch.Tensor], children: tuple[str, ...] | list[str]
) -> dict[str, torch.Tensor]:
    """Keys that start with an integer index (lightly's ``nn.Sequential(*resnet.children())``:
    ``0.weight``, ``4.0.conv1.weight``) renamed to the child at that position."""
    out = {}
    for key, value in sd.items():
        first, _, rest = key.partition(".")
        if first.isdigit() and int(first) < len(children) and rest:
            key = f"{children[int(first)]}.{rest}"
        out[key] = value
    return out


@dataclass
class SplitKeys:
    encoder: dict[str, torch.Tensor]  # keys as the encoder names them
    head: dict[str, torch.Tensor]  # keys as in the file
    other: list[str]  # neither encoder nor head (reported as unused)
    source: str
    prefix: str = ""  # the backbone prefix stripped from encoder keys


def split_keys(flat: dict[str, torch.Tensor], encoder: str) -> SplitKeys:
    """Split a flat state dict into encoder keys, head keys and the rest; name the source.

    Without a backbone prefix the whole dict is an encoder state dict (torchvision/timm; its
    ``fc.*`` or classifier then ends up unused). With one, keys outside backbone and head
    (solo-learn's ``classifier.*``, momentum encoders, ...) are returned as "other".
    """
    prefixes = {p for k in flat for p in BACKBONE_PREFIXES if k.startswith(p)}
    if not prefixes:
        source = "timm" if encoder.startswith("timm:") else "torchvision"
        return SplitKeys(dict(flat), {}, [], source)
    enc: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    other: list[str] = []
    for key, value in flat.items():
        bb = next((p for p in BACKBONE_PREFIXES if key.startswith(p)), None)
        if bb is not None:
            enc[key[len(bb):]] = value
        elif key.startswith(HEAD_PREFIXES):
            head[key] = value
        else:
            other.append(key)
    if any(k.startswith("projector.") for k in head):
        source = "solo-learn"
    elif any(k.startswith("head.") for k in head) and any(k.startswith("encoder.") for k in flat):
        source = "run"
    else:
        source = "lightly"
    return SplitKeys(enc, head, other, source, prefix=min(prefixes))


def load_encoder_weights(
    net: nn.Module, sd: dict[str, torch.Tensor], path: Path, allow_missing: bool = False
) -> tuple[list[str], list[str]]:
    """Copy ``sd`` into ``net``; returns (keys of ``sd`` left unused, weights of ``net`` absent).

    Every weight of ``net`` must be found with its shape, unless ``allow_missing`` (absent
    weights keep their initialisation and are returned). Integer-indexed keys (lightly's
    Sequential backbone) are read as the child of ``net`` at that position.
    """
    children = [name for name, _ in net.named_children()]
    mapped = rename_sequential_keys(sd, children)  # our name -> tensor, in the order of sd
    original = dict(zip(mapped, sd, strict=True))  # our name -> the name in the file
    new_state, used, missing, wrong = {}, set(), [], []
    for key, ref in net.state_dict().items():
        if key in mapped and mapped[key].shape == ref.shape:
            new_state[key] = mapped[key]
            used.add(key)
        elif key in mapped:
            wrong.append(f"{key} {tuple(mapped[key].shape)} vs {tuple(ref.shape)}")
        elif key.endswith("num_batches_tracked"):
            new_state[key] = ref  # absent from old torchvision files; unused in eval mode
        else:
            missing.append(key)
    if wrong or (missing and not allow_missing):
        what = f"shape mismatch {wrong[:3]}" if wrong else f"missing keys {missing[:5]}"
        raise CheckpointError(
            f"{path} does not fit encoder {type(net).__name__}: {what} ({len(missing)} "
            f"missing, {len(wrong)} mismatched; check --encoder and --cifar-stem)"
        )
    net.load_state_dict(new_state, strict=not missing)
    return [original[k] for k in mapped if k not in used], missing


@dataclass
class _Block:
    linear: dict[str, torch.Tensor]
    bn: dict[str, torch.Tensor] = field(default_factory=dict)


def parse_head_blocks(head_sd: dict[str, torch.Tensor]) -> list[_Block]:
    """Group head weights into [Linear (+BN)] blocks in module order.

    Works for every flattening in use: lightly ``layers.3.weight``, solo-learn ``2.weight``
    and ours ``layers.1.0.weight``: modules are ordered by the integers in their path.
    """
    modules: dict[tuple[int, ...], dict[str, torch.Tensor]] = {}
    for key, value in head_sd.items():
        path, _, param = key.rpartition(".")
        index = tuple(int(p) for p in path.split(".") if p.isdigit())
        modules.setdefault(index, {})[param] = value
    blocks: list[_Block] = []
    for index in sorted(modules):
        params = modules[index]
        if "running_mean" in params:
            if not blocks or blocks[-1].bn:
                raise ValueError(f"BatchNorm at {index} follows no Linear layer")
            blocks[-1].bn = params
        elif params.get("weight") is not None and params["weight"].dim() == 2:
            blocks.append(_Block(linear=params))
        else:
            raise ValueError(f"unrecognised head module at {index}: {sorted(params)}")
    return blocks


def build_head_from_keys(
    head_sd: dict[str, torch.Tensor], in_dim: int
) -> tuple[ProjectionHead | None, list[str]]:
    """Rebuild an external projector as our head; (None, its keys) if not representable.

    One [Linear (+ BN)] block is a ``linear`` head, several are an ``mlp`` head of that depth.
    Representable: every block Linear [+ BN with affine], all or none with BN, equal hidden
    widths, and a first layer that reads ``in_dim`` features.
    """
    if not head_sd:
        return None, []
    try:
        blocks = parse_head_blocks(head_sd)
        with_bn = {bool(b.bn) for b in blocks}
        dims = [b.linear["weight"].shape for b in blocks]
        if len(with_bn) != 1 or dims[0][1] != in_dim:
            raise ValueError("mixed BatchNorm or wrong input width")
        if any(dims[i][0] != dims[i + 1][1] for i in range(len(dims) - 1)):
            raise ValueError("layer widths do not chain")
        if len({d[0] for d in dims[:-1]}) > 1:
            raise ValueError("unequal hidden widths")
        bn = with_bn.pop()
        shape = HeadShape(out_dim=dims[-1][0], hidden_dim=dims[0][0], num_layers=len(blocks),
                          bn=bn)
        head = build_head("linear" if len(blocks) == 1 else "mlp", in_dim=in_dim, shape=shape)
        state = {}
        for i, block in enumerate(blocks):
            for name, value in block.linear.items():
                state[f"layers.{i}.0.{name}"] = value
            for name, value in block.bn.items():
                state[f"layers.{i}.1.{name}"] = value
        head.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError, KeyError):
        return None, list(head_sd)
    return head, []
