"""``simclr-transfer export --format torchvision|timm|detectron2 SOURCE``: backbone weights out.

* ``torchvision``: ``<encoder>_torchvision.pth``, a state dict that
  ``torchvision.models.<encoder>().load_state_dict(sd, strict=False)`` loads (only ``fc.*``
  missing);
* ``timm``: ``<encoder>_timm.safetensors`` with timm's ResNet names (the same as
  torchvision's); ``timm.create_model(name, num_classes=0)`` loads it strictly, or pass it as
  ``pretrained_cfg_overlay=dict(file=...)``;
* ``detectron2``: ``<encoder>_d2.pkl`` plus ``faster_rcnn_<R-xx>_{FPN,C4}.yaml`` configs (see
  :mod:`.detectron2` and :mod:`.detectron2_config`).

Every key is mapped or reported on stdout; an unmapped key is an error, not a silent drop.
A run pretrained with a CIFAR stem (3x3 conv1) cannot be expressed in detectron2 (its stem is
7x7) and is refused for that format.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from pretrain.config_io import load_config
from pretrain.errors import CheckpointError
from pretrain.registry import Registry
from transfer.detection.config import DetectionConfig, resolve_preset
from transfer.detection.detectron2_config import DEPTHS, detectron2_config
from transfer.detection.detectron2_weights import detectron2_backbone, write_detectron2_pickle
from transfer.detection.weights import BackboneSource, load_backbone_source

Exporter = Callable[[BackboneSource, Path, argparse.Namespace], list[Path]]
EXPORTERS: Registry[Exporter] = Registry("export format")


def _weights(source: BackboneSource) -> dict[str, torch.Tensor]:
    if source.state_dict is None:
        raise CheckpointError("nothing to export from 'random'; give a run directory or weights file")
    return {k: v.detach().cpu().contiguous() for k, v in source.state_dict.items()}


def _stem_note(source: BackboneSource) -> None:
    if source.cifar_stem:
        print(f"warning: {source.path} has a CIFAR stem (3x3 conv1); build the model with "
              "pretrain.encoders.build_encoder(..., cifar_stem=True) to load it")


@EXPORTERS.register("torchvision")
def export_torchvision(source: BackboneSource, out: Path, args: argparse.Namespace) -> list[Path]:
    _stem_note(source)
    path = out / f"{source.encoder}_torchvision.pth"
    out.mkdir(parents=True, exist_ok=True)
    torch.save(_weights(source), path)
    return [path]


@EXPORTERS.register("timm")
def export_timm(source: BackboneSource, out: Path, args: argparse.Namespace) -> list[Path]:
    from safetensors.torch import save_file

    _stem_note(source)
    path = out / f"{source.encoder}_timm.safetensors"
    out.mkdir(parents=True, exist_ok=True)
    save_file(_weights(source), str(path), metadata={"format": "pt", "arch": source.encoder})
    return [path]


@EXPORTERS.register("detectron2")
def export_detectron2(source: BackboneSource, out: Path, args: argparse.Namespace) -> list[Path]:
    arrays, mapping = detectron2_backbone(source)
    for key, reason in mapping.skipped.items():
        print(f"skipped {key}: {reason}")
    dropped = ", ".join(source.dropped[:4]) or "none"
    print(f"mapped {len(mapping.mapped)} of {len(source.state_dict or {})} keys "
          f"(+ {len(source.dropped)} non-backbone keys dropped: {dropped})")
    pkl = out / f"{source.encoder}_d2.pkl"
    write_detectron2_pickle(arrays, pkl, author=f"simclr-transfer export of {source.path}")
    cfg = load_config(DetectionConfig, args.config, args.overrides) if args.config else DetectionConfig()
    num_classes = args.num_classes or len(cfg.data.classes) or 20
    paths = [pkl]
    for arch in ("fpn", "c4"):
        d2 = detectron2_config(cfg, source.encoder, arch, str(pkl.resolve()), num_classes,
                               *source.normalisation(cfg.model.pixel_mean, cfg.model.pixel_std))
        path = out / f"faster_rcnn_R_{DEPTHS[source.encoder]}_{arch.upper()}.yaml"
        path.write_text(yaml.safe_dump(d2, sort_keys=False))
        paths.append(path)
    return paths


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.usage = ("simclr-transfer export --format FORMAT [--output DIR] [--config PRESET] "
               "[--num-classes K] [--json] SOURCE [key=value ...]")
    p.add_argument("source", help="run directory or torchvision/timm weights file")
    p.add_argument("overrides", nargs="*", help="detection config overrides for the d2 config")
    p.add_argument("--format", required=True, choices=EXPORTERS.names())
    p.add_argument("--output", default="", help="output folder (default <run>/export/<format>)")
    p.add_argument("--config", default="", help="detection config for the detectron2 config file")
    p.add_argument("--num-classes", type=int, default=0, help="detectron2 NUM_CLASSES (default: "
                   "len(data.classes) of --config, else 20)")
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.config:
        args.config = resolve_preset(args.config)
    source = load_backbone_source(args.source)
    base = Path(source.path) if source.kind == "run" else Path(source.path).parent
    out = Path(args.output) if args.output else base / "export" / args.format
    paths = EXPORTERS.get(args.format)(source, out, args)
    for path in paths:
        print(f"wrote {path}")
    return {"export/format": args.format, "export/files": [str(p) for p in paths]}
