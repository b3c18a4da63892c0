"""The one loader of checkpoints for evaluation: our runs and every external format.

Sources, told apart by their key names:

* a run directory of ours (``config.yaml`` + ``checkpoint.pt``), or its ``checkpoint.pt``:
  read by :func:`pretrain.run.load_run` (config, setup, weights);
* our ``checkpoint.pt`` copied away from its run (no config beside it);
* a plain torchvision or timm state dict (``conv1.weight`` ... ``fc.weight``), ``.pth``/``.pt``
  or ``.safetensors``, possibly under ``state_dict``/``model`` and ``module.`` wrappers;
* a lightly SimCLR checkpoint: ``backbone.*`` (often ``nn.Sequential(*resnet.children()[:-1])``,
  so ``backbone.0.weight`` is ``conv1.weight`` and ``backbone.4.*`` is ``layer1.*``) and
  ``projection_head.layers.*`` (Linear / BatchNorm1d / ReLU flattened into one Sequential);
* a solo-learn checkpoint: a Lightning dict whose ``state_dict`` holds ``backbone.*``,
  ``projector.*`` (Linear, [BN], ReLU, Linear) and an online ``classifier.*``.

Wrappers (``module.``, ``model.``, ``_orig_mod.``) are stripped. The architecture of an external
ResNet is read from its keys (ResNet-18/34/50; a 3x3 ``conv1`` means the CIFAR stem); any other
architecture is named by the user (``--encoder timm:vit_tiny_patch16_224``). Every encoder weight
must be found with the right shape, else :class:`CheckpointError` (detection may allow missing
ones and reports them); keys that were not used (``fc.*``, ``classifier.*``, a head we cannot
represent) are returned in ``unused_keys`` so that nothing is dropped silently. Each file is read
once (its sha256 is computed from the same bytes), always with ``torch.load(weights_only=True)``
or safetensors. How each library names its tensors is :mod:`probes.key_layouts`' business.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pretrain.checkpoint import UnsafeCheckpointError, load_checkpoint_and_hash
from pretrain.encoders import build_encoder, check_encoder
from pretrain.errors import CheckpointError
from pretrain.heads import build_head
from pretrain.model import SimCLRModel
from pretrain.run import (
    CHECKPOINT_FILE,
    Run,
    is_run_checkpoint,
    is_run_dir,
    load_run,
    read_checkpoint,
)
from probes.key_layouts import (
    CLASSIFIER_PREFIXES,
    build_head_from_keys,
    infer_architecture,
    load_encoder_weights,
    split_keys,
)

WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
WRAPPER_KEYS = ("state_dict", "model")  # a dict of weights under one of these top-level keys


@dataclass
class LoadedModel:
    """A model ready for evaluation, and what a result record must say about its origin.

    Attributes:
        model: encoder and head (the identity head ``none`` when the file has none), eval mode.
        taps: representations this checkpoint really has: ``h``, ``head.0``, ..., ``z``.
        source: ``run``, ``torchvision``, ``timm``, ``lightly`` or ``solo-learn``.
        checkpoint: the file read; checkpoint_hash: sha256 of its bytes.
        encoder, cifar_stem: the architecture the weights were read into.
        run: the loaded run, for a run directory (config, setup); None for external files.
        epoch: epochs completed, when the file says.
        head_loaded: whether the file had a projection head that was rebuilt.
        unused_keys: keys of the file that went nowhere; missing_keys: encoder weights that
            were absent (only with ``allow_missing``); foreign_keys: the unused keys that sit
            inside the encoder itself (not its classifier): the file's network has parts this
            architecture lacks, so its weights are not the whole network.
    """

    model: SimCLRModel
    taps: list[str]
    source: str
    checkpoint: Path
    checkpoint_hash: str
    encoder: str
    cifar_stem: bool
    run: Run | None = None
    epoch: int | None = None
    head_loaded: bool = False
    unused_keys: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    foreign_keys: list[str] = field(default_factory=list)

    @property
    def model_key(self) -> str:
        """Feature-cache key: file content plus the architecture it was read into."""
        arch = f"{self.encoder}{'-cifar' if self.cifar_stem else ''}".replace(":", "-")
        return f"{self.checkpoint_hash[:16]}-{arch.replace('/', '-')}"


def load_any(
    path: str | Path, encoder: str = "", cifar_stem: bool = False, allow_missing: bool = False
) -> LoadedModel:
    """Load a run directory or an external checkpoint file (eval mode, on the CPU).

    Args:
        path: run directory, its ``checkpoint.pt``, or an external weights file.
        encoder: architecture of an external checkpoint (``resnet18``, ``timm:vit_tiny...``);
            "" = read it from the keys (ResNets only). Ignored for run directories.
        cifar_stem: with ``encoder``: the external ResNet has the 3x3 CIFAR stem.
        allow_missing: accept encoder weights absent from the file (listed in ``missing_keys``).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"run directory or checkpoint not found: {path}")
    run_dir = path if path.is_dir() else path.parent
    if path.is_dir() or (path.name == CHECKPOINT_FILE and is_run_dir(run_dir)):
        run = load_run(run_dir)
        return LoadedModel(
            run.model, list(run.setup.taps), "run", run.checkpoint, run.checkpoint_sha256,
            run.setup.encoder, run.setup.cifar_stem, run=run, epoch=run.epoch,
            head_loaded=bool(run.model.head.layers),
        )
    state, sha256 = read_weights_file(path)
    epoch = state.get("epoch")
    flat = flatten_state(state, path)
    keys = split_keys(flat, encoder)
    if not encoder:
        encoder, cifar_stem = infer_architecture(keys.encoder, path)
    net = build_encoder(encoder, cifar_stem=cifar_stem)
    unused_encoder, missing = load_encoder_weights(net, keys.encoder, path, allow_missing)
    unused = [keys.prefix + k for k in unused_encoder]
    foreign = sorted(keys.prefix + k for k in unused_encoder if not k.startswith(CLASSIFIER_PREFIXES))
    width = check_encoder(net, encoder)
    head, head_unused = build_head_from_keys(keys.head, width)
    unused += keys.other + head_unused
    model = SimCLRModel(net, head or build_head("none", in_dim=width))
    model.eval()
    taps = ["h"] + (head.tap_names() if head is not None else [])
    return LoadedModel(
        model, taps, keys.source, path, sha256, encoder, cifar_stem,
        epoch=int(epoch) if isinstance(epoch, (int, float)) else None,
        head_loaded=head is not None, unused_keys=sorted(unused), missing_keys=missing,
        foreign_keys=foreign,
    )


def read_weights_file(path: Path) -> tuple[dict[str, Any], str]:
    """A weights file's contents and the sha256 of its bytes (read once).

    A file that is no checkpoint, or pickles objects that ``weights_only=True`` refuses (a
    Lightning checkpoint of solo-learn or lightly pickles its hyper-parameters), is a one-line
    :class:`CheckpointError` naming it (:func:`pretrain.checkpoint.load_checkpoint_and_hash`).
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load as load_safetensors

        data = path.read_bytes()
        try:
            return dict(load_safetensors(data)), hashlib.sha256(data).hexdigest()
        except Exception as exc:  # safetensors raises its own error types
            detail = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise CheckpointError(f"cannot load {path}: not a valid safetensors file ({detail})"
                                  ) from None
    try:
        return load_checkpoint_and_hash(path)
    except UnsafeCheckpointError as exc:
        raise CheckpointError(
            f"cannot load checkpoint {path}: {exc.problem} (Lightning checkpoints of solo-learn "
            "or lightly pickle their hyper-parameters); from a copy you trust, save only the "
            f"weights, torch.save(c['state_dict'], '{path.with_suffix('.weights.pt')}') with c "
            "the loaded checkpoint, and pass that file"
        ) from None


def flatten_state(state: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint as one flat dict, wrappers removed.

    Our own ``checkpoint.pt`` is read through its schema (``encoder.*`` and ``head.*``); a
    Lightning or plain checkpoint may nest the weights under ``state_dict`` or ``model``.
    """
    if is_run_checkpoint(state):
        ckpt = read_checkpoint(state, path)
        state = {
            **{f"encoder.{k}": v for k, v in ckpt.encoder.items()},
            **{f"head.{k}": v for k, v in ckpt.head.items()},
        }
    else:
        for key in WRAPPER_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    flat = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        flat[key] = value
    if not flat:
        raise CheckpointError(f"checkpoint {path} holds no tensors")
    return flat
