"""Load an encoder (and head) from any checkpoint a probe may be pointed at.

Sources, told apart by their key names:

* a run directory of ours (``config.yaml`` + ``checkpoint.pt``), or its ``checkpoint.pt``;
* a plain torchvision or timm state dict (``conv1.weight`` ... ``fc.weight``);
* a lightly SimCLR checkpoint: ``backbone.*`` (often ``nn.Sequential(*resnet.children()[:-1])``,
  so ``backbone.0.weight`` is ``conv1.weight`` and ``backbone.4.*`` is ``layer1.*``) and
  ``projection_head.layers.*`` (Linear / BatchNorm1d / ReLU flattened into one Sequential);
* a solo-learn checkpoint: a Lightning dict whose ``state_dict`` holds ``backbone.*``,
  ``projector.*`` (Linear, [BN], ReLU, Linear) and an online ``classifier.*``.

Wrappers (``module.``, ``model.``, ``_orig_mod.``) are stripped. For external files the user names
the encoder architecture (``--encoder resnet18 --cifar-stem``). Every encoder weight must be found
with the right shape, else :class:`CheckpointError`; keys that were not used (``fc.*``,
``classifier.*``, a head we cannot represent) are returned in ``unused_keys`` so that nothing is
dropped silently. Loading always goes through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pretrain.checkpoint import load_checkpoint
from pretrain.config import PretrainConfig
from pretrain.encoders import build_encoder
from pretrain.errors import CheckpointError
from pretrain.heads import ProjectionHead, build_head
from pretrain.model import SimCLRModel
from pretrain.runs import CHECKPOINT_FILE, CONFIG_FILE, load_run_model

WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
BACKBONE_PREFIXES = ("backbone.", "encoder.")
HEAD_PREFIXES = ("projection_head.", "projector.", "head.")


@dataclass
class LoadedModel:
    """A model ready for probing, and what a result record must say about its origin."""

    model: SimCLRModel
    taps: list[str]  # representations this checkpoint really has: "h", "head.0", ..., "z"
    source: str  # run | torchvision | timm | lightly | solo-learn
    checkpoint: Path
    checkpoint_hash: str  # sha256 of the checkpoint file's bytes
    encoder: str
    cifar_stem: bool
    config: PretrainConfig | None = None  # the run's pretraining config (runs only)
    run_dir: Path | None = None
    unused_keys: list[str] = field(default_factory=list)

    @property
    def model_key(self) -> str:
        """Feature-cache key: file content plus the architecture it was read into."""
        arch = f"{self.encoder}{'-cifar' if self.cifar_stem else ''}".replace(":", "-")
        return f"{self.checkpoint_hash[:16]}-{arch.replace('/', '-')}"


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_any(path: str | Path, encoder: str = "", cifar_stem: bool = False) -> LoadedModel:
    """Load a run directory or an external checkpoint file (eval mode, on the CPU).

    Args:
        path: run directory, its ``checkpoint.pt``, or an external state-dict file.
        encoder: architecture of an external checkpoint (``resnet18``, ``timm:vit_tiny...``);
            ignored for run directories, whose config says it.
        cifar_stem: external ResNet trained with the 3x3 CIFAR stem.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"run directory or checkpoint not found: {path}")
    run_dir = path if path.is_dir() else path.parent
    if path.is_dir() or (path.name == CHECKPOINT_FILE and (run_dir / CONFIG_FILE).is_file()):
        model, cfg = load_run_model(run_dir)
        ckpt = run_dir / CHECKPOINT_FILE
        return LoadedModel(
            model, model.tap_names(), "run", ckpt, file_sha256(ckpt), cfg.model.encoder,
            cfg.model.cifar_stem, config=cfg, run_dir=run_dir,
        )
    if not encoder:
        raise CheckpointError(
            f"{path} is not a run directory; name its architecture, e.g. "
            "--encoder resnet18 --cifar-stem"
        )
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        if "weights only" not in str(exc).lower():
            raise
        raise CheckpointError(
            f"{path} holds objects other than tensors, so torch.load(weights_only=True) refuses "
            "it (Lightning checkpoints of solo-learn or lightly pickle their hyper-parameters); "
            "for a file you trust, keep only the weights: python -c \"import torch; "
            f"c = torch.load('{path}', weights_only=False); "
            f"torch.save(c['state_dict'], '{path.with_suffix('.weights.pt')}')\""
        ) from None
    flat = _flatten(state, path)
    net = build_encoder(encoder, cifar_stem=cifar_stem)
    keys = split_keys(flat, encoder)
    unused = [keys.prefix + k for k in load_encoder_weights(net, keys.encoder, path)]
    head, head_unused = build_head_from_keys(keys.head, int(net.num_features))
    unused += keys.other + head_unused
    model = SimCLRModel(net, head or build_head("none", in_dim=int(net.num_features)))
    model.eval()
    taps = ["h"] + (head.tap_names() if head is not None else [])
    return LoadedModel(
        model, taps, keys.source, path, file_sha256(path), encoder, cifar_stem,
        unused_keys=sorted(unused),
    )


def _flatten(state: dict, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint as one flat dict (Lightning ``state_dict`` or ours unwrapped)."""
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    elif isinstance(state.get("encoder"), dict):  # our own checkpoint.pt without its config
        state = {
            **{f"encoder.{k}": v for k, v in state["encoder"].items()},
            **{f"head.{k}": v for k, v in (state.get("head") or {}).items()},
        }
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


def load_encoder_weights(net: nn.Module, sd: dict[str, torch.Tensor], path: Path) -> list[str]:
    """Copy ``sd`` into ``net``; every weight of ``net`` must be found. Returns unused keys.

    Keys that start with an integer index (lightly's ``nn.Sequential(*resnet.children())``)
    are renamed to the child of ``net`` at that position.
    """
    children = [name for name, _ in net.named_children()]
    mapped: dict[str, tuple[str, torch.Tensor]] = {}  # our name -> (name in the file, tensor)
    for key, value in sd.items():
        first, _, rest = key.partition(".")
        ours = key
        if first.isdigit() and int(first) < len(children) and rest:
            ours = f"{children[int(first)]}.{rest}"
        mapped[ours] = (key, value)
    new_state, used, missing, wrong = {}, set(), [], []
    for key, ref in net.state_dict().items():
        if key in mapped and mapped[key][1].shape == ref.shape:
            new_state[key] = mapped[key][1]
            used.add(key)
        elif key in mapped:
            wrong.append(f"{key} {tuple(mapped[key][1].shape)} vs {tuple(ref.shape)}")
        elif key.endswith("num_batches_tracked"):
            new_state[key] = ref  # absent from old torchvision files; unused in eval mode
        else:
            missing.append(key)
    if wrong or missing:
        what = f"shape mismatch {wrong[:3]}" if wrong else f"missing keys {missing[:5]}"
        raise CheckpointError(
            f"{path} does not fit encoder {type(net).__name__}: {what} ({len(missing)} "
            f"missing, {len(wrong)} mismatched; check --encoder and --cifar-stem)"
        )
    net.load_state_dict(new_state)
    return [orig for ours, (orig, _) in mapped.items() if ours not in used]


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
    """Rebuild our MLP head from an external projector; (None, its keys) if not representable.

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
        head = build_head(
            "mlp", in_dim=in_dim, out_dim=dims[-1][0], hidden_dim=dims[0][0],
            num_layers=len(blocks), bn=bn,
        )
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
