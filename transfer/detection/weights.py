"""Where a detection backbone's weights come from: a run directory, a state-dict file, or none.

* a run directory of ``simclr-pretrain``: the encoder's weights; the projection head is dropped
  (detection fine-tunes ``h``'s network, as in SimCLR Sec. 4 and MoCo Sec. 4.2);
* a torchvision or timm ResNet state dict (``.pth``/``.pt``/``.safetensors``; both libraries
  name ResNet keys alike): ``fc.*`` is ignored, the architecture is read from the keys;
* ``random``: the random-init baseline (needs ``model.encoder``).

Every key is accounted for: :class:`LoadReport` lists loaded, missing and ignored keys, and
the detection command prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD, PRESETS
from pretrain.checkpoint import load_checkpoint
from pretrain.errors import CheckpointError, ConfigError
from pretrain.runs import CHECKPOINT_FILE, CONFIG_FILE, load_run_config

RESNETS = ("resnet18", "resnet34", "resnet50")
WRAPPER_KEYS = ("state_dict", "model", "encoder", "backbone")
PREFIXES = ("module.", "encoder.", "backbone.", "model.")


@dataclass
class BackboneSource:
    """A resolved initialisation: architecture, weights (torchvision key names) and provenance."""

    kind: str  # "run" | "file" | "random"
    path: str
    encoder: str
    cifar_stem: bool = False
    state_dict: dict[str, torch.Tensor] | None = None
    dropped: list[str] = field(default_factory=list)  # source keys not meant for a backbone
    setup: dict[str, Any] = field(default_factory=dict)  # pretraining fields for records
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD


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
            f"{depth} blocks in layer3); detection supports {', '.join(RESNETS)}"
        )
    return arch


def _is_resnet_dict(state: dict[str, Any]) -> bool:
    return "conv1.weight" in state or any(k.startswith("layer1.") for k in state)


def _unwrap(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The ResNet weights inside a checkpoint: under a wrapper key and/or a name prefix."""
    for key in WRAPPER_KEYS:
        if not _is_resnet_dict(state) and isinstance(state.get(key), dict):
            return _unwrap(state[key])
    if not _is_resnet_dict(state):
        for prefix in PREFIXES:
            inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            out = _unwrap(inner) if inner else {}
            if _is_resnet_dict(out):
                return out
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"cannot load {path}: {exc}") from None
    return _unwrap(load_checkpoint(path))


def pretraining_normalization(run_cfg: Any) -> tuple[tuple, tuple]:
    """The mean/std a run was pretrained with (its augment preset, resolved by dataset)."""
    preset = run_cfg.augment.preset
    if preset == "auto":
        dataset = run_cfg.data.name.split(":")[0]
        preset = {"digits": "digits", "cifar10": "cifar"}.get(dataset, "imagenet")
    chosen = PRESETS.get(preset, PRESETS["imagenet"])
    return tuple(chosen["mean"]), tuple(chosen["std"])


def run_setup(run_cfg: Any, run_dir: Path) -> dict[str, Any]:
    """The pretraining fields of a record's ``setup`` (the names ``probes.records`` uses)."""
    m, t = run_cfg.model, run_cfg.train
    return {
        "source": "run",
        "checkpoint": str((run_dir / CHECKPOINT_FILE).resolve()),
        "encoder": m.encoder,
        "cifar_stem": m.cifar_stem,
        "head": m.head,
        "num_layers": m.num_layers if m.head == "mlp" else 0,
        "hidden_dim": m.hidden_dim,
        "out_dim": m.out_dim,
        "bn": m.bn,
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "temperature": t.temperature,
        "optimizer": run_cfg.optim.name,
        "pretrain_seed": t.seed,
        "pretrain_dataset": run_cfg.data.name,
        "run_dir": str(run_dir.resolve()),
    }


def load_backbone_source(source: str, encoder: str = "") -> BackboneSource:
    """Resolve ``source`` (run dir, weights file or ``random``); ``encoder`` must agree."""
    if encoder and encoder not in RESNETS:
        raise ConfigError(f"model.encoder must be one of {', '.join(RESNETS)}; got {encoder!r}")
    if source == "random":
        if not encoder:
            raise ConfigError("random init needs model.encoder=resnet18|resnet34|resnet50")
        setup = {"source": "random", "init": "random", "encoder": encoder, "cifar_stem": False}
        return BackboneSource("random", "", encoder, setup=setup)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise CheckpointError(f"not a run directory (no {CONFIG_FILE}): {path}")
        run_cfg = load_run_config(path)
        arch = run_cfg.model.encoder
        if arch not in RESNETS:
            raise ConfigError(f"run {path} has encoder {arch!r}; detection needs one of "
                              f"{', '.join(RESNETS)}")
        if encoder and encoder != arch:
            raise ConfigError(f"model.encoder={encoder} but run {path} was pretrained with {arch}")
        state = load_checkpoint(path / CHECKPOINT_FILE)
        if not isinstance(state.get("encoder"), dict):
            raise CheckpointError(f"{path / CHECKPOINT_FILE} has no 'encoder' weights")
        head = [f"head.{k}" for k in state.get("head", {})]
        mean, std = pretraining_normalization(run_cfg)
        setup = run_setup(run_cfg, path)
        return BackboneSource("run", str(path), arch, run_cfg.model.cifar_stem, dict(state["encoder"]),
                              head, setup, mean, std)  # type: ignore[arg-type]
    if not path.is_file():
        raise CheckpointError(f"backbone source not found: {source} (a run directory, a .pth/"
                              ".safetensors state dict, or 'random')")
    state = read_state_dict(path)
    dropped = sorted(k for k in state if k.startswith("fc.") or k.startswith("head."))
    weights = {k: v for k, v in state.items() if k not in dropped}
    arch = infer_resnet(list(weights))
    if encoder and encoder != arch:
        raise ConfigError(f"model.encoder={encoder} but {path} holds {arch} weights")
    cifar = tuple(weights["conv1.weight"].shape[-2:]) == (3, 3) if "conv1.weight" in weights else False
    setup = {"source": "file", "init": path.stem, "encoder": arch, "cifar_stem": cifar,
             "checkpoint": str(path.resolve())}
    return BackboneSource("file", str(path), arch, cifar, weights, dropped, setup)


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
